"""Natural training: cross-entropy on clean inputs, from scratch (the starting point of every defence)."""

from dataclasses import dataclass

from torch import nn

from raygap.methods.base import Objective, register


@register
class Natural(Objective):
    parts = ("ce",)
    from_scratch = True
    attacked = False

    @dataclass
    class Params:
        name: str = "natural"

    def adversarial(self, module, x, y):
        return None

    def loss(self, net, x, y, x_adv):
        ce = nn.functional.cross_entropy(net(x), y)
        return {"loss": ce, "ce": ce}
