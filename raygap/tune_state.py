"""Tune's saved state of a search, checked before Tune reads it back.

Tune saves its state in a staging folder on the driver and copies it into the experiment folder with
pyarrow, file by file and not atomically: a crash in the middle of a copy leaves a file cut short, and
`Tuner.restore` then fails on it with a traceback each time the command runs. It reads back tuner.pkl
and, of each kind of session file below, the newest (the greatest name, as Tune picks it); a crash
between tuner.pkl and the first experiment state leaves nothing to restore either.

When one of those is not whole, every Tune file is moved to `torn-tune-state/` with one line, and the
search goes on as a new Tune run over the same study and tables for the trials still to run
(`tune._search`). What only Tune's state held is lost: a trial that was running is recorded as lost (one
the study was told had ended, as ended: recorder.Recorder.settle) and another runs in its place. The
study, the tables and the trials' checkpoints are not touched.
"""

from __future__ import annotations

import fnmatch
import json
import pickletools

from raygap import layout, storage

TUNER = "tuner.pkl"
# the files Tune's restore reads, and how: its experiment state is JSON, the others are (cloud)pickles
SESSION_FILES = {"experiment_state-*.json": "json", "search_gen_state-*.json": "pickle",
                 "searcher-state-*.pkl": "pickle", "basic-variant-state-*.json": "pickle",
                 "callback-states-*.pkl": "pickle"}


def _whole(data: bytes, kind: str) -> bool:
    try:
        if kind == "json":
            json.loads(data)
        else:
            for _ in pickletools.genops(data):  # walks the opcodes to STOP without building any object
                pass
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _torn(experiment_dir: str, read_back: list) -> str | None:
    """What keeps Tune from restoring these files, or None when it can."""
    if not any(fnmatch.fnmatch(name, "experiment_state-*.json") for name, _ in read_back):
        return f"{storage.join(experiment_dir, TUNER)} has no experiment state beside it (the driver stopped " \
               "before Tune first saved one)"
    for name, kind in read_back:
        path = storage.join(experiment_dir, name)
        data = storage.read_bytes(path)
        if not _whole(data, kind):
            return f"{path} was cut short by a crash ({len(data)} bytes, not whole {kind})"
    return None


def restorable(experiment_dir: str) -> bool:
    """Whether Tune can restore the search in `experiment_dir`; if its state is there but not whole, it is
    moved aside first (module docstring)."""
    names = storage.listdir(experiment_dir)
    if TUNER not in names:
        return False
    read_back = [(TUNER, "pickle")]
    for pattern, kind in SESSION_FILES.items():
        newest = max(fnmatch.filter(names, pattern), default=None)
        if newest:
            read_back.append((newest, kind))
    torn = _torn(experiment_dir, read_back)
    if torn is None:
        return True
    aside = storage.join(experiment_dir, layout.TORN_TUNE_STATE)
    for name in names:
        if name == TUNER or any(fnmatch.fnmatch(name, pattern) for pattern in SESSION_FILES):
            source = storage.join(experiment_dir, name)
            storage.write_bytes(storage.join(aside, name), storage.read_bytes(source))
            storage.remove(source)
    print(f"[search] Tune's state cannot be restored: {torn}; its files are moved to {aside}/ and the search "
          "goes on over its study and tables", flush=True)
    return False
