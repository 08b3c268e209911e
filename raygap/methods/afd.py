"""AFD: "Mitigating Feature Gap for Adversarial Robustness by Feature Disentanglement" (Zhou et al., AAAI 2025).

Two disentanglers act on the adversarial feature f = g(x'): D1 keeps its intrinsic part, D2 models its
confused part. Each is a residual low-rank map D = I + B A of rank `disentangler_size` with B = 0 at the
start, so training starts exactly at the pre-trained model and D1 still folds into the classifier.

Losses, with W the shared classifier and g_pre the frozen pre-trained backbone:
  confused:   alpha * CE(W D2 stopgrad(f), y_wrong)        updates D2 only
  separation: beta * mean cos(D1 f, D2 f)                   does not update D2
  main:       CE(W D1 f, y) + gamma * (1 - mean cos(D1 f, g_pre(x)))

The public code steps three SGD optimisers in sequence. Here the routing is done with `detach`
instead (W is detached in the confused loss, D2 f in the separation loss), so one backward pass and
one SGD optimiser give each parameter exactly the gradients the paper's split prescribes, at the cost
of one training step rather than three.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from raygap.methods.base import Objective as Base
from raygap.methods.base import wrong_class
from raygap.models import Classifier


@dataclass
class Params:
    name: str = "afd"
    alpha: float = 0.05  # weight of the confused-feature loss
    beta: float = 0.25  # weight of the separation loss
    align_weight: float = 25.0  # the paper's gamma: alignment of D1 f with the pre-trained feature
    disentangler_size: Optional[int] = None  # rank r of D = I + B A; None: the feature dimension


def check(p):
    bad = [(k, f"must be >= 0, got {getattr(p, k)}") for k in ("alpha", "beta", "align_weight") if getattr(p, k) < 0]
    if p.disentangler_size is not None and p.disentangler_size < 1:
        bad.append(("disentangler_size", f"must be >= 1 (or null for the feature dimension), got {p.disentangler_size}"))
    return bad


class Disentangler(nn.Module):
    """D = I + B A, a d x d map of rank <= r added to the identity; B starts at zero."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)  # A
        self.up = nn.Linear(rank, dim, bias=False)  # B
        nn.init.zeros_(self.up.weight)

    def forward(self, f):
        return f + self.up(self.down(f))

    def matrix(self) -> torch.Tensor:
        return torch.eye(self.up.out_features, device=self.up.weight.device) + self.up.weight @ self.down.weight


class AFDModule(nn.Module):
    def __init__(self, model: Classifier, rank: int):
        super().__init__()
        self.model = model
        self.d1 = Disentangler(model.feature_dim, rank)
        self.d2 = Disentangler(model.feature_dim, rank)

    def forward(self, x, parts: bool = False):
        f = self.model.features(x)
        f1 = self.d1(f)
        head = self.model.head
        if not parts:
            return head(f1)  # inference: W D1 g(x)
        f2 = self.d2(f.detach())
        # W is detached on the confused path so that this loss updates D2 alone
        return {"f1": f1, "f2": f2, "logits": head(f1),
                "confused_logits": F.linear(f2, head.weight.detach(), head.bias.detach())}


class Objective(Base):
    parts = ("ce_adv", "align", "confused", "separation")
    teacher_forwards = 1  # the frozen natural model's features of x

    def __init__(self, model: Classifier, params: Params, attack):
        super().__init__(model, params, attack)
        rank = min(params.disentangler_size or model.feature_dim, model.feature_dim)
        self.module = AFDModule(model, rank)
        # The frozen pre-trained model gives the natural features that D1 f is aligned with; it is kept
        # outside `module` so that it is neither trained, averaged nor synchronised.
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)

    def loss(self, net, x, y, x_adv):
        p = self.params
        out = net(x_adv, parts=True)
        f1, f2 = out["f1"].float(), out["f2"].float()
        with torch.no_grad():
            f_nat = self.teacher.features(x).float()
            y_wrong = wrong_class(out["logits"], y)
        ce = F.cross_entropy(out["logits"], y)
        align = 1 - F.cosine_similarity(f1, f_nat, dim=1).mean()
        confused = F.cross_entropy(out["confused_logits"], y_wrong)
        separation = F.cosine_similarity(f1, f2.detach(), dim=1).mean()
        total = ce + p.align_weight * align + p.alpha * confused + p.beta * separation
        return {"loss": total, "ce_adv": ce, "align": align, "confused": confused, "separation": separation}

    @staticmethod
    def export(module: AFDModule) -> Classifier:
        """Fold D1 into the classifier: W' = W D1, so the deployed model is the plain backbone and head."""
        model = copy.deepcopy(module.model)
        with torch.no_grad():
            model.head.weight.copy_(module.model.head.weight @ module.d1.matrix())
        return model
