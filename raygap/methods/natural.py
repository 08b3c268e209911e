"""Natural training: cross-entropy on clean inputs, from scratch (the starting point of every defence)."""

from dataclasses import dataclass

from torch import nn

from raygap.methods.base import Objective as Base
from raygap.methods.base import no_checks as check  # noqa: F401  (the registry's interface)


@dataclass
class Params:
    name: str = "natural"


class Objective(Base):
    parts = ("ce",)
    from_scratch = True
    attacked = False

    def adversarial(self, module, x, y):
        return None

    def loss(self, net, x, y, x_adv):
        ce = nn.functional.cross_entropy(net(x), y)
        return {"loss": ce, "ce": ce}
