"""AFD: "Mitigating Feature Gap for Adversarial Robustness by Feature Disentanglement" (Zhou et al., AAAI 2025).

The reference is the authors' code, GitHub changzhang777/AFD (`tl+sl.py`, `models/resnet.py`). Notation:
g the backbone, f = g(x') the pooled feature of the adversarial input, W and b the classifier, D1 and D2
the disentanglers (`linear1`, `linear2` there), g_pre the frozen natural model, y_wrong the top-scoring
wrong class of W D1 f (its prediction where that is wrong, else the runner-up).

  f1 = D1 f,  f2 = D2 stopgrad(f)
  confused:   alpha * CE(W f2 + b, y_wrong)              (W and b are not detached there)
  separation: sigma * mean cos(f1, f2)
  main:       CE(W f1 + b, y) + gamma * (1 - mean cos(f1, g_pre(x)))     gamma = `align_weight`

The official update (`method.update=official`, the default). Per batch, `tl+sl.py` zeroes the gradients
once, runs one forward, then: confused backward, `optimizer1.step()` (D2 only); separation backward,
`optimizer2.step()` (every parameter but D2); main backward, `optimizer.step()` (every parameter but
D2 again), each an SGD with lr 0.025, momentum 0.9 and weight decay 5e-4, gradients accumulating in
between. The script runs under DataParallel on the two GPUs it sets (CUDA_VISIBLE_DEVICES='1, 2'),
whose replicas hold copies of the weights, so all three backward passes differentiate the same
forward at the batch's starting weights. (On one GPU, current PyTorch refuses to backpropagate through
weights changed in place; the PyTorch < 1.2 its README recommends would silently use the changed ones.)
Momentum SGD is linear in its gradients, so the three steps are, to first order in the learning rate,
one SGD step in which
  D2 gets        alpha * grad(confused)                                   with weight decay 5e-4,
  the rest gets  2 alpha * grad(confused) + 2 sigma * grad(separation) + grad(main)
                 (the confused loss reaches only W and b there)           with weight decay 3 x 5e-4,
and D2's gradient from the separation loss is computed but never applied. Three times the decay, not
two: the script needs PyTorch below 1.5 (see above), whose SGD adds the decay into `p.grad` in place
(`d_p.add_(weight_decay, p.data)`, changed to an out-of-place add by pytorch/pytorch#12218's fix in 1.5),
so optimizer2's decay stays in the gradient that the main backward accumulates into, and optimizer adds
its own on top: 1 (optimizer2) + 2 (optimizer). raygap takes that one step: one backward of the sum
below and one SGD with two parameter groups (`param_groups`). What the second and third official steps
add beyond it is weight decay evaluated at the parameters moved by the step before (a term of order
lr^2 x weight decay); tests/test_methods.py steps the official three optimisers, with an SGD that
decays in place as PyTorch 1.4's did, beside it and checks that the two agree within that term.

`method.update=official_torch2` is the same rule with the decay counted twice: what the three
optimisers would apply under PyTorch >= 1.5, whose SGD leaves `p.grad` untouched (the script cannot
run there as written; the variant is kept to measure what the decay costs, benchmarks/README.md).
`method.update=split` is raygap's earlier variant, not the authors' rule: W is detached in the
confused loss (so it updates D2 alone), sigma and the weight decay count once.

The disentangler (`disentangler_size`, raygap's search knob; the code has only the full size):
- null or >= d: the official full bias-free d x d matrix, initialised to the identity and trained
  directly; weight decay pulls it toward zero, as in the official code.
- r < d: D = I + B A with A (r x d) orthonormal rows and B = 0, so training starts at the identity.
  Then the gradient of B is G A^T and that of A is zero (G: the loss gradient of D), and the first
  step changes D by -lr G A^T A: the full matrix's step projected onto an r-dimensional subspace
  (A^T A is a projector), at the full matrix's learning rate. (A Kaiming-uniform A would scale it
  by about r / (3d) instead, so small ranks would barely train.) Weight decay pulls B A toward
  zero, that is D toward the identity.

Other departures from the official code: the training attack is raygap's PGD, whose uniform random
start is clamped to [0, 1] (the official one is not, before its first step; its steps are the same
with attack.step_size=0.007, as in the CIFAR configs); the feature is the pooled feature of raygap's
backbones (models.py: e.g. its ResNet-18 stem pads by 1, the official by 0); batch norm sees the whole
batch of x' (DataParallel's two replicas each normalise their half); the weight EMA and the schedule
are the loop's, the official ones in recipe=afd_paper and the CIFAR searches (train.ema, train.schedule=afd).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from raygap.methods.base import Objective, register, wrong_class
from raygap.models import Classifier


class Update(StrEnum):
    official = "official"  # the authors' three-optimiser rule in one step, as PyTorch < 1.5 ran it (docstring)
    official_torch2 = "official_torch2"  # the same, with the decay PyTorch >= 1.5's SGD would apply (2x)
    split = "split"  # raygap's earlier variant


class LowRank(nn.Module):
    """D = I + B A of rank <= r: A has orthonormal rows, B starts at zero."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)  # A
        self.up = nn.Linear(rank, dim, bias=False)  # B
        nn.init.orthogonal_(self.down.weight)
        nn.init.zeros_(self.up.weight)

    def forward(self, f):
        return f + self.up(self.down(f))

    def matrix(self) -> torch.Tensor:
        return torch.eye(self.up.out_features, device=self.up.weight.device) + self.up.weight @ self.down.weight


class Full(nn.Linear):
    """The official disentangler: a bias-free d x d matrix, initialised to the identity."""

    def __init__(self, dim: int):
        super().__init__(dim, dim, bias=False)
        nn.init.eye_(self.weight)

    def matrix(self) -> torch.Tensor:
        return self.weight


def disentangler(dim: int, size: Optional[int]) -> nn.Module:
    return Full(dim) if size is None or size >= dim else LowRank(dim, size)


class AFDModule(nn.Module):
    def __init__(self, model: Classifier, size: Optional[int], update: str):
        super().__init__()
        self.model = model
        self.d1 = disentangler(model.feature_dim, size)
        self.d2 = disentangler(model.feature_dim, size)
        self.update = update

    def forward(self, x, parts: bool = False):
        f = self.model.features(x)
        f1 = self.d1(f)
        head = self.model.head
        if not parts:
            return head(f1)  # inference: W D1 g(x)
        f2 = self.d2(f.detach())
        out = {"f1": f1, "f2": f2, "logits": head(f1)}
        if self.update != "split":
            out["confused_logits"] = head(f2)  # grad to D2 and (once) to W, b
            out["confused_head_logits"] = head(f2.detach())  # the second, to W and b only
        else:
            out["confused_logits"] = F.linear(f2, head.weight.detach(), head.bias.detach())
        return out


@register
class AFD(Objective):
    parts = ("ce_adv", "align", "confused", "separation")
    teacher_forwards = 1  # the frozen natural model's features of x

    @dataclass
    class Params:
        name: str = "afd"
        alpha: float = 0.05  # weight of the confused-feature loss
        sigma: float = 0.25  # weight of the separation loss: the script's --sigma (its README and the paper: beta)
        align_weight: float = 25.0  # the official gamma: alignment of D1 f with the pre-trained feature
        disentangler_size: Optional[int] = None  # null or >= the feature dimension: the full matrix; else rank r
        update: Update = Update.official

    non_negative = ("alpha", "sigma", "align_weight")

    @classmethod
    def check(cls, p):
        bad = super().check(p)
        if p.disentangler_size is not None and p.disentangler_size < 1:
            bad.append(("disentangler_size", f"must be >= 1 (or null for the full matrix), got {p.disentangler_size}"))
        return bad

    def __init__(self, model: Classifier, params: Params, attack):
        super().__init__(model, params, attack)
        if params.disentangler_size is not None and params.disentangler_size > model.feature_dim:
            print(f"afd: disentangler_size {params.disentangler_size} exceeds the feature dimension "
                  f"{model.feature_dim}: using the full {model.feature_dim} x {model.feature_dim} matrix", flush=True)
        self.module = AFDModule(model, params.disentangler_size, params.update)
        # The frozen pre-trained model gives the natural features that D1 f is aligned with: a module of
        # the objective (so .to(device) moves it) outside `module` (so it is neither trained, averaged,
        # synchronised nor checkpointed; every run rebuilds it from its start model).
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)

    def train(self, mode: bool = True):
        """The teacher stays in eval mode: its batch norm must keep the pre-trained statistics."""
        super().train(mode)
        self.teacher.eval()
        return self

    def param_groups(self, weight_decay: float) -> list[dict]:
        decays = {"official": 3, "official_torch2": 2}  # how often the rest's decay is applied (docstring)
        if self.params.update not in decays:
            return super().param_groups(weight_decay)
        d2 = list(self.module.d2.parameters())
        in_d2 = {id(p) for p in d2}
        rest = [p for p in self.module.parameters() if id(p) not in in_d2]
        return [{"params": rest, "weight_decay": decays[self.params.update] * weight_decay},
                {"params": d2, "weight_decay": weight_decay}]

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
        # D2's gradient comes from the confused loss alone, under both updates
        separation = F.cosine_similarity(f1, f2.detach(), dim=1).mean()
        total = ce + p.align_weight * align + p.alpha * confused + p.sigma * separation
        if p.update != "split":  # the optimiser steps that count these terms twice (docstring)
            total = total + p.alpha * F.cross_entropy(out["confused_head_logits"], y_wrong) + p.sigma * separation
        return {"loss": total, "ce_adv": ce, "align": align, "confused": confused, "separation": separation}

    @staticmethod
    def export(module: AFDModule) -> Classifier:
        """Fold D1 into the classifier: W' = W D1, so the deployed model is the plain backbone and head."""
        model = copy.deepcopy(module.model)
        with torch.no_grad():
            model.head.weight.copy_(module.model.head.weight @ module.d1.matrix())
        return model
