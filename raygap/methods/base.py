"""The method contract: a training objective is an `nn.Module` subclass of `Objective`, registered by name.

Adding a defence is one file in this package (methods/__init__.py imports every file here) holding a
class decorated with `@register`. The class owns
- `Params`: a dataclass of its hyperparameters, whose `name` default is the `method=<name>` it answers to;
- `non_negative`: the hyperparameters that must be >= 0, and `check(params)` for any other range rule;
- every module it uses: `self.module`, what is trained, and any frozen one (a teacher), so that
  `objective.to(device)` moves them all;
- how x' is made (`adversarial`), the loss and its logged `parts`, and the deployable classifier (`export`).
`module(x)` always returns the logits used at inference, so attacks and validation run on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from raygap.models import Classifier

METHODS: dict[str, type[Objective]] = {}  # method name -> its Objective class


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: `method=<cls.Params.name>` trains with `cls`."""
    METHODS[cls.Params.name] = cls
    return cls


class Objective(nn.Module):
    """Cross-entropy on x' = the training attack's example, made on the trained classifier itself.

    Subclasses set `Params` and override what differs: `adversarial`, `loss`, `export`, `param_groups`.
    """

    @dataclass
    class Params:
        name: str = ""

    parts = ("ce_adv",)  # the logged loss parts; the epochs table has a column for each
    from_scratch = False  # True: with init=auto, start from random weights instead of the natural model

    # The passes of the classifier a step cannot avoid, per training image (benchmarks/step.py times
    # each alone): the attack's k steps of forward + input gradient, its extra forwards on x, the
    # loss's forward + full backward pairs, and forwards of a frozen teacher.
    attacked = True
    attack_clean_forwards = 0
    training_passes = 1
    teacher_forwards = 0

    def __init__(self, model: Classifier, params, attack):
        super().__init__()
        self.module: nn.Module = model
        self.params = params
        self.attack = attack

    non_negative: tuple[str, ...] = ()  # the weights that must be >= 0, checked by `check`

    @classmethod
    def check(cls, params) -> list[tuple[str, str]]:
        """(key, why) for each hyperparameter out of range; empty when all are fine."""
        return [(key, f"must be >= 0, got {getattr(params, key)}") for key in cls.non_negative
                if getattr(params, key) < 0]

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
