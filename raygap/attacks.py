"""Adversarial attacks: `attack(model, x, y) -> x_adv` for inputs in [0, 1].

raygap's own attacks (FGSM, PGD, CW) differentiate with respect to the input only
(`torch.autograd.grad`), so no weight gradient is ever computed: one attack step costs a forward and an
input-gradient backward. AutoAttack's FAB calls `backward()`, so evaluated models have their weights
frozen (`requires_grad_(False)`). Attacks do not change the model's train/eval mode; callers put it in
eval mode first.
"""

from __future__ import annotations

import functools
import logging
import re
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F

from raygap import data
from raygap.errors import UserError
from raygap.schema import Norm

Attack = Callable[[Callable, torch.Tensor, torch.Tensor], torch.Tensor]
NORMS = {Norm.linf: "Linf", Norm.l2: "L2"}  # raygap's names, and AutoAttack's and RobustBench's


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


# AutoAttack comes from pyautoattack 0.2.0 (PyPI), the code of fra31/auto-attack by the same authors.
# Checked against fra31/auto-attack line by line: the driver (version "standard": APGD-CE, APGD-T, FAB-T,
# Square; 100 iterations, 9 target classes, 5,000 queries; the same restarts, seeds and cascade over the
# points still robust), APGD, FAB and the checks are the same code. What differs: the driver's API
# (keyword-only arguments, attacks= for attacks_to_run, batch_size= for bs, device= defaulting to the
# CPU, (x_adv, y_adv) always returned, an optional resumable state file); the checks' warnings go to the
# Python logger "auto-attack" instead of print; APGD computes its step-size checkpoints in __init__ (the
# same values for the standard version, whose iteration counts never change); FAB's restart loop that
# ran once is unrolled; Square clips its square to the image side, which changes nothing on square images.
# torchattacks' AutoAttack, which raygap used before, runs 10 iterations and n_classes - 1 targets: a
# weaker, different attack. A better-kept package with this code does not exist on PyPI (the authors'
# own is installed from git; robustbench 1.1.1 imports it and cannot be installed without it).
#
# The attacks of the standard AutoAttack in its order, named as in the authors' code. Each is also an
# evaluation name of its own, at the standard version's settings, and `autoattack` runs all four.
AUTOATTACK = ("apgd-ce", "apgd-t", "fab-t", "square")


def accuracy_key(name: str) -> str:
    """The JSON key and table column of an attack's accuracy: apgd-ce -> apgd_ce_acc (no '-' in columns)."""
    return f"{name.replace('-', '_')}_acc"


def _pyautoattack():
    try:
        import pyautoattack
    except ImportError:
        raise UserError("AutoAttack is not installed: pip install pyautoattack==0.2.0 (the AutoAttack authors' "
                        "code; raygap's install brings it), or leave autoattack, apgd-ce, apgd-t, fab-t and "
                        "square out of the attack lists") from None
    return pyautoattack


def standard_autoattack(model, *, eps: float, norm: str, num_classes: int, seed: int, device,
                        attacks=AUTOATTACK):
    """The AutoAttack authors' driver (pyautoattack 0.2.0, fra31/auto-attack's code) in its standard
    version: APGD-CE (100 iterations, 1 restart), APGD-T (100 iterations, 9 target classes), FAB-T
    (100 iterations, 9 target classes) and Square (5,000 queries), each attacking only the points
    that the ones before it left robust. `attacks` runs a subset of the four at these same settings.

    One departure, only where it must: a data set with fewer than 10 classes has fewer than 9 other
    classes to target, so APGD-T and FAB-T target all of them (the authors' code would fail).
    """
    driver = _pyautoattack().AutoAttack(model, eps=eps, norm=NORMS[norm], seed=seed,
                                        device=device, version="standard")
    targets = min(driver.apgd_targeted.n_target_classes, num_classes - 1)  # the standard 9 where there are 10+
    driver.apgd_targeted.n_target_classes = driver.fab.n_target_classes = targets
    driver.attacks_to_run = list(attacks)
    return driver


def autoattack(model, x, y, *, eps: float, norm: str, num_classes: int, seed: int, attacks=AUTOATTACK):
    """`attacks` of the standard AutoAttack on one batch, as `attack(model, x, y) -> x_adv`."""
    driver = standard_autoattack(model, eps=eps, norm=norm, num_classes=num_classes, seed=seed, device=x.device,
                                 attacks=attacks)
    x_adv, _ = driver.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv


class AutoAttackLog(logging.Handler):
    """While attached (`with AutoAttackLog(progress) as warnings:`), collects the warnings of AutoAttack's
    checks (a randomised or dynamic model, softmax outputs, zero gradients, Square beating the white-box
    attacks) and passes its per-attack progress to `progress`: a standard AutoAttack of a robust CIFAR
    model runs for many minutes on a CPU, and these lines are the only sign of life meanwhile."""

    PROGRESS = re.compile(r"robust accuracy after (\S+): (\S+) \(total time (\S+) s\)")

    def __init__(self, progress=None):
        super().__init__(logging.DEBUG)
        self.progress = progress
        self.messages: list[str] = []
        self.logger = logging.getLogger("auto-attack")

    def emit(self, record):
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            if message not in self.messages:
                self.messages.append(message)
        elif self.progress and (match := self.PROGRESS.match(message)):
            attack, robust, seconds = match.groups()
            self.progress(f"    AutoAttack: {robust} of this batch left robust after {attack} ({seconds} s so far)")

    def __enter__(self):
        # the authors' code logs its progress at DEBUG level: let it through to this handler only
        self.saved = self.logger.level, self.logger.propagate
        self.logger.setLevel(logging.DEBUG if self.progress else logging.WARNING)
        self.logger.propagate = False
        self.logger.addHandler(self)
        return self.messages

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.level, self.logger.propagate = self.saved


def make_attack(name: str, *, eps: float, norm: str = "linf", steps: int | None = None,
                step_size: float | None = None, random_start: bool | None = None,
                num_classes: int = 10, seed: int = 0) -> Attack | None:
    """An attack by name: clean (None), fgsm, pgd, cw, pgd<k>, cw<k> (k steps), the standard AutoAttack
    (autoattack) or one of its attacks at the standard settings (apgd-ce, apgd-t, fab-t, square).

    Defaults follow the literature: FGSM takes one step of eps (1.25 eps from a random start, as in
    "Fast is better than free"); PGD and CW take steps of 2.5 eps / k (Madry et al.) from a random start.
    """
    if norm not in NORMS:
        raise UserError(f"unknown norm '{norm}'; choose one of: {', '.join(NORMS)}")
    if name == "clean":
        return None
    if name == "autoattack" or name in AUTOATTACK:
        _pyautoattack()  # a missing install is refused where the attack is named, before anything runs
        return functools.partial(autoattack, eps=eps, norm=norm, num_classes=num_classes, seed=seed,
                                 attacks=AUTOATTACK if name == "autoattack" else (name,))
    match = re.fullmatch(r"(fgsm|pgd|cw)(\d*)", name)
    if not match:
        raise UserError(f"unknown attack '{name}'; choose clean, fgsm, pgd, cw, pgd<steps>, cw<steps>, "
                        f"autoattack (standard) or one of its attacks: {', '.join(AUTOATTACK)}")
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


def describe(attack: Attack | None) -> str:
    """The attack and settings behind an attack that make_attack built, for results and their readers."""
    if attack is None:
        return "none (clean accuracy)"
    k = attack.keywords
    if attack.func is autoattack:
        d = standard_autoattack(None, eps=k["eps"], norm=k["norm"], num_classes=k["num_classes"], seed=k["seed"],
                                device="cpu", attacks=k["attacks"])
        settings = {"apgd-ce": f"APGD-CE {d.apgd.n_iter} iterations x {d.apgd.n_restarts} restart",
                    "apgd-t": f"APGD-T {d.apgd_targeted.n_iter} iterations x {d.apgd_targeted.n_target_classes} "
                              "target classes",
                    "fab-t": f"FAB-T {d.fab.n_iter} iterations x {d.fab.n_target_classes} target classes",
                    "square": f"Square {d.square.n_queries} queries"}
        standard = tuple(k["attacks"]) == AUTOATTACK
        which = "the standard AutoAttack" if standard else "one attack of the standard AutoAttack"
        return (f"{which} (pyautoattack {_pyautoattack().__version__}, seed {k['seed']}): "
                + ", then ".join(settings[a] for a in k["attacks"])
                + (", each on the points the ones before left robust" if len(k["attacks"]) > 1 else ""))
    loss = "the CW margin" if k["loss_fn"] is margin else "cross-entropy"
    start = "a random start" if k["random_start"] else "the clean input"
    return f"{k['steps']} step{'s' * (k['steps'] > 1)} of {k['step_size']:.4g} on {loss} from {start}"


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def correct_mask(model, split: data.Split, attack, batch_size: int, bf16: bool = False,
                 after_batch=None) -> torch.Tensor:
    """Which examples of `split` `model` classifies correctly after `attack` (None: clean): a bool tensor.
    `after_batch(done)`, if given, is called after each batch with the number of examples done so far."""
    device = next(model.parameters()).device
    correct = []
    for start in range(0, len(split), batch_size):
        x = data.to_float(split.x[start:start + batch_size].to(device))
        y = split.y[start:start + batch_size].to(device)
        with autocast(device, bf16):
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad():
                correct.append(model(x).argmax(1) == y)
        if after_batch:
            after_batch(start + len(y))
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool, device=device)


def correct_count(model, split: data.Split, attack, batch_size: int, bf16: bool = False) -> torch.Tensor:
    """How many examples of `split` `model` classifies correctly after `attack` (None: clean), as a tensor."""
    return correct_mask(model, split, attack, batch_size, bf16).sum()
