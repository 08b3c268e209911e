"""MART (Wang et al., 2020): boosted CE on x' + beta * KL(p(x) || p(x')) weighted by 1 - p_y(x).

The loss follows the authors' code (YisenWang/MART, mart.py). raygap runs it, by default, as fine-tuned
MART: from the natural pre-trained model, in raygap's regime, with beta 6. The paper's ResNet-18
figures come from training from random weights with beta 5 and weight decay 3.5e-3:
`recipe=mart_paper` (search_spaces/recipe/). Departures from the code: the training attack starts
uniformly in the epsilon ball (the official start is x + 0.001 N(0, 1)); its step size is raygap's
default (2.5 eps / steps) unless attack.step_size is set (0.007 in the recipe).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raygap.methods.base import Objective, register, wrong_class


def terms(logits_nat, logits_adv, y):
    """(boosted CE, misclassification-aware KL, the per-example weights 1 - p_y(x)), as in the MART code."""
    p_adv = F.softmax(logits_adv.float(), 1)
    boosted_ce = (F.cross_entropy(logits_adv.float(), y)
                  + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), wrong_class(logits_adv, y)))
    p_nat = F.softmax(logits_nat.float(), 1)
    weights = 1.0000001 - p_nat.gather(1, y[:, None]).squeeze(1)
    kl_per_example = (p_nat * (torch.log(p_nat + 1e-12) - torch.log(p_adv + 1e-12))).sum(1)
    return boosted_ce, (kl_per_example * weights).mean(), weights


@register
class MART(Objective):
    parts = ("bce", "kl")
    training_passes = 2  # natural and adversarial
    non_negative = ("beta",)

    @dataclass
    class Params:
        name: str = "mart"
        beta: float = 6.0
    def loss(self, net, x, y, x_adv):
        boosted_ce, weighted_kl, _ = terms(net(x), net(x_adv), y)
        return {"loss": boosted_ce + self.params.beta * weighted_kl, "bce": boosted_ce, "kl": weighted_kl}
