"""TRADES (Zhang et al., 2019): CE(f(x), y) + beta * KL(p(x) || p(x')), x' maximising that KL.

The loss and attack follow the authors' code (yaodongyu/TRADES, trades.py). raygap runs it, by default,
as fine-tuned TRADES: from the natural pre-trained model, in raygap's regime (train.*), like the other
fine-tuning methods. The paper's figures come from training from random weights in its own regime:
`recipe=trades_paper` (search_spaces/recipe/). The loss runs the code's three forward passes (see
`loss`). Departures from the code: the attack starts uniformly in the epsilon ball (the official start
is x + 0.001 N(0, 1)), and its step size is raygap's default (2.5 eps / steps) unless
attack.step_size is set (0.007 in the recipe). On handwritten digits beta
defaults to 1, the authors' MNIST value (search_spaces/data_method/).
"""

from dataclasses import dataclass

import torch.nn.functional as F

from raygap.methods.base import Objective, register


def kl(logits_nat, logits_adv):
    """KL(p(x) || p(x')) summed over classes, averaged over the batch, as in the TRADES code."""
    return F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits_nat.float(), 1), reduction="batchmean")


@register
class TRADES(Objective):
    parts = ("ce", "kl")
    attack_clean_forwards = 1  # the attack's KL target
    training_passes = 3  # natural, adversarial, natural again (the official code's three forwards)
    non_negative = ("beta",)

    @dataclass
    class Params:
        name: str = "trades"
        beta: float = 6.0

    def adversarial(self, module, x, y):
        p_nat = F.softmax(module(x).float(), 1).detach()
        # The attack maximises the same KL the loss minimises; a random start is needed since its
        # gradient vanishes at x' = x.
        return self.attack(module, x, y, loss_fn=lambda logits, _: F.kl_div(
            F.log_softmax(logits.float(), 1), p_nat, reduction="sum"))

    def loss(self, net, x, y, x_adv):
        # Three forward passes in this order, as trades.py runs them: the natural batch for the CE, then
        # the adversarial and the natural batch again for the KL. In training mode the two natural
        # passes give the same logits (batch norm normalises by the batch), so the gradient is that of
        # two passes; what the third changes is batch norm's running statistics, which evaluation uses:
        # each pass moves them, and the last one moves them toward the natural batch's.
        logits_nat = net(x)
        ce = F.cross_entropy(logits_nat, y)
        logits_adv = net(x_adv)
        robust = kl(net(x), logits_adv)
        return {"loss": ce + self.params.beta * robust, "ce": ce, "kl": robust}
