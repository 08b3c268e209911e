"""Adversarial attacks: `attack(model, x, y) -> x_adv` for inputs in [0, 1].

Every gradient step differentiates with respect to the input only (`torch.autograd.grad`), so no
weight gradient is ever computed: one attack step costs a forward and an input-gradient backward.
Attacks do not change the model's train/eval mode; callers put it in eval mode first.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

import torch
import torch.nn.functional as F

from raygap.errors import UserError

Attack = Callable[[Callable, torch.Tensor, torch.Tensor], torch.Tensor]
NORMS = ("linf", "l2")


def cross_entropy(logits, y):
    return F.cross_entropy(logits.float(), y, reduction="sum")


def margin(logits, y):
    """The CW margin max_{j != y} z_j - z_y (maximised by the attack)."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (other - true).sum()


def _per_sample_norm(t):
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(delta, eps, norm):
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)


def pgd(model, x, y, *, eps: float, step_size: float, steps: int, norm: str = "linf",
        random_start: bool = True, loss_fn=cross_entropy) -> torch.Tensor:
    """Projected gradient ascent on `loss_fn(model(x'), y)` inside the `norm` ball of radius eps."""
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start:
        if norm == "linf":
            delta.uniform_(-eps, eps)
        else:
            direction = torch.randn_like(x)
            radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype) * eps
            delta = direction / _per_sample_norm(direction) * radius
        delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            step = grad.sign() if norm == "linf" else grad / _per_sample_norm(grad)
            delta = _project(delta + step_size * step, eps, norm)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def autoattack(model, x, y, *, eps: float, norm: str, num_classes: int, seed: int = 0):
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), through torchattacks."""
    try:
        import torchattacks
    except ImportError:
        raise UserError("the 'autoattack' evaluation needs torchattacks: pip install 'raygap[autoattack]' "
                        "(see the README on why it is optional), or leave autoattack out of the attack list")
    attack = torchattacks.AutoAttack(model, norm="Linf" if norm == "linf" else "L2", eps=eps,
                                     version="standard", n_classes=num_classes, seed=seed)
    return attack(x, y)


def make_attack(name: str, *, eps: float, norm: str = "linf", steps: int | None = None,
                step_size: float | None = None, random_start: bool | None = None,
                num_classes: int = 10) -> Attack | None:
    """An attack by name: clean (None), fgsm, pgd, cw, pgd<k>, cw<k> (k steps) or autoattack.

    Defaults follow the literature: FGSM takes one step of eps (1.25 eps from a random start, as in
    "Fast is better than free"); PGD and CW take steps of 2.5 eps / k (Madry et al.) from a random start.
    """
    if norm not in NORMS:
        raise UserError(f"unknown norm '{norm}'; choose one of: {', '.join(NORMS)}")
    if name == "clean":
        return None
    if name == "autoattack":
        return lambda model, x, y: autoattack(model, x, y, eps=eps, norm=norm, num_classes=num_classes)
    match = re.fullmatch(r"(fgsm|pgd|cw)(\d*)", name)
    if not match:
        raise UserError(f"unknown attack '{name}'; choose clean, fgsm, pgd, cw, pgd<steps>, cw<steps> or autoattack")
    kind, count = match.group(1), match.group(2)
    if kind == "fgsm":
        if count:
            raise UserError(f"unknown attack '{name}': fgsm takes a single step")
        steps = 1
        random_start = bool(random_start)
        step_size = step_size or (1.25 * eps if random_start else eps)
    else:
        steps = int(count) if count else (steps or (30 if kind == "cw" else 10))
        random_start = True if random_start is None else random_start
        step_size = step_size or 2.5 * eps / steps
    if steps < 1:
        raise UserError(f"attack '{name}' needs at least one step")
    # a partial, so that a method can swap the loss (TRADES attacks a KL divergence)
    return functools.partial(pgd, eps=eps, step_size=step_size, steps=steps, norm=norm,
                             random_start=random_start, loss_fn=margin if kind == "cw" else cross_entropy)
