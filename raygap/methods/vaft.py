"""vAFT, vanilla adversarial fine-tuning: PGD-AT (Madry et al.) started from the natural pre-trained model."""

from dataclasses import dataclass

from raygap.methods.base import Objective  # noqa: F401  (the registry's interface)
from raygap.methods.base import no_checks as check  # noqa: F401


@dataclass
class Params:
    name: str = "vaft"
