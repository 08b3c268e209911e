"""How long is left, as progress lines print it."""

from __future__ import annotations

import math


def eta(seconds: float) -> str:
    """HH:MM:SS, the hours not wrapping at a day (a long search may have 30 hours to go)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--:--"
    whole = int(round(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
