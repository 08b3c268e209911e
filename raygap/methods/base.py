"""What every training objective shares; each method is one file that subclasses `Objective`."""

from __future__ import annotations

import torch
from torch import nn

from raygap.models import Classifier


class Objective:
    """vAFT, the plain case: the classifier itself is trained on CE of PGD examples made on it.

    Subclasses change `module` (what is trained), `adversarial` (how x' is made), `loss` and `export`.
    `module(x)` always returns the logits used at inference, so attacks and validation run on it.
    """

    parts = ("ce_adv",)  # the logged loss parts; the epochs table has a column for each
    from_scratch = False  # True: start from random weights instead of the natural pre-trained model

    def __init__(self, model: Classifier, params, attack):
        self.module: nn.Module = model
        self.params = params
        self.attack = attack

    # The passes of the classifier a step cannot avoid, per training image (benchmarks/step.py times
    # each alone): the attack's k steps of forward + input gradient, its extra forwards on x, the
    # loss's forward + full backward pairs, and forwards of a frozen teacher.
    attacked = True
    attack_clean_forwards = 0
    training_passes = 1
    teacher_forwards = 0

    def passes(self, attack_steps: int) -> int:
        """Forward-pass equivalents per training image, for model FLOP utilisation: a forward is 1,
        an input-gradient backward 1, a full backward 2."""
        return (2 * attack_steps * self.attacked + self.attack_clean_forwards + 3 * self.training_passes
                + self.teacher_forwards)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The SGD parameter groups of `module`'s trainable parameters, each with its weight decay."""
        return [{"params": [p for p in self.module.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def adversarial(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """x' for this batch, made on `module` in eval mode; None when the method trains on x alone."""
        return self.attack(module, x, y)

    def loss(self, net: nn.Module, x, y, x_adv) -> dict:
        """{'loss': the scalar to minimise, other keys: its logged parts}; `net` may be DDP-wrapped."""
        ce = nn.functional.cross_entropy(net(x_adv), y)
        return {"loss": ce, "ce_adv": ce}

    @staticmethod
    def export(module: nn.Module) -> Classifier:
        """The deployable plain classifier for a trained `module` (or its EMA copy)."""
        return module


def wrong_class(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The top-scoring wrong class: the prediction where it is wrong, else the runner-up."""
    return logits.detach().scatter(1, y[:, None], float("-inf")).argmax(1)


def no_checks(params) -> list:
    return []
