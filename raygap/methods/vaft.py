"""vAFT, vanilla adversarial fine-tuning: PGD-AT (Madry et al.) started from the natural pre-trained model."""

from dataclasses import dataclass

from raygap.methods.base import Objective, register


@register
class VAFT(Objective):
    """The base objective as it is: CE on PGD examples, from the natural pre-trained model."""

    @dataclass
    class Params:
        name: str = "vaft"
