"""PGD-AT (Madry et al., 2018): CE on PGD examples, trained from scratch.

From scratch it needs a longer schedule than fine-tuning, e.g. train.epochs=100 train.lr=0.1.
"""

from dataclasses import dataclass

from raygap.methods.base import Objective, register


@register
class PGDAT(Objective):
    from_scratch = True

    @dataclass
    class Params:
        name: str = "pgd_at"
