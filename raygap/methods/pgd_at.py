"""PGD-AT (Madry et al., 2018): CE on PGD examples, trained from scratch.

From scratch it needs a longer schedule than fine-tuning, e.g. train.epochs=100 train.lr=0.1.
"""

from dataclasses import dataclass

from raygap.methods.base import Objective as Base
from raygap.methods.base import no_checks as check  # noqa: F401  (the registry's interface)


@dataclass
class Params:
    name: str = "pgd_at"


class Objective(Base):
    from_scratch = True
