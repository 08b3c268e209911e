"""What each evaluation attack finds and costs, on a digits model of each method, side by side in one run.

    python benchmarks/evaluation.py [--epochs 6] [--n 200] [--methods vaft trades mart afd drrdn] [overrides ...]

Fine-tunes each method from the same cached natural model (one seed), then evaluates the natural model
and every fine-tuned one on the first n test examples with PGD-20, PGD-50, APGD-CE, APGD-T, the
standard AutoAttack (the authors' code, pyautoattack) and, when it is installed (it is not a
dependency: pip install --no-deps torchattacks), torchattacks' AutoAttack, which raygap used before.
Every attack runs in fp32 on the examples the model classifies correctly, from the same seed, through
raygap's own evaluation (raygap.robustness.worst_case). Prints a Markdown table of accuracy and seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import checkpoint, config, data, robustness, runner, train  # noqa: E402
from raygap.attacks import make_attack  # noqa: E402

ATTACKS = ["pgd20", "pgd50", "apgd-ce", "apgd-t", "autoattack"]


def torchattacks_autoattack(eps: float, num_classes: int):
    """torchattacks' AutoAttack(version="standard"), as raygap ran it before, or None where not installed."""
    try:
        import torchattacks
    except ImportError:
        return None
    return lambda model, x, y: torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                                       n_classes=num_classes, seed=0)(x, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n", type=int, default=200, help="test examples (0: all)")
    parser.add_argument("--methods", nargs="+", default=["vaft", "trades", "mart", "afd", "drrdn"])
    parser.add_argument("--storage", default=tempfile.mkdtemp(prefix="raygap-bench-"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=cifar10 model=resnet18")
    args = parser.parse_args()

    base = [f"storage={args.storage}", f"train.epochs={args.epochs}", *args.overrides]
    cfg = config.load(base)
    models = [("natural", runner.natural_model(cfg)["checkpoint"])]
    for method in args.methods:
        overrides = base + [f"method={method}", f"pretrained={models[0][1]}"]
        models.append((method, train.run(config.load(overrides))["checkpoint"]))

    dataset = data.load(cfg.data)
    test = dataset.test if not args.n else data.Split(dataset.test.x[:args.n], dataset.test.y[:args.n])
    attacks = {"clean": None, **{name: make_attack(name, eps=cfg.eval.eps, norm=cfg.eval.norm,
                                                   num_classes=dataset.num_classes, seed=cfg.eval.seed)
                                 for name in ATTACKS}}
    old = torchattacks_autoattack(cfg.eval.eps, dataset.num_classes)
    if old is not None:
        attacks["torchattacks AA"] = old
    rows = []
    for label, path in models:
        model, _ = checkpoint.load(path)
        model.requires_grad_(False)
        print(f"{label}: {path}", file=sys.stderr, flush=True)
        with robustness.full_fp32():
            report = robustness.worst_case(model, test, attacks, cfg.eval.batch_size, cfg.eval.seed,
                                         progress=lambda line: print(line, file=sys.stderr, flush=True))
        rows.append((label, report))

    print(f"\n{cfg.data.name}, {cfg.model.name}, {args.epochs} fine-tuning epochs, {len(test)} test examples, "
          f"{cfg.eval.norm} eps {cfg.eval.eps:.4g}: accuracy % (seconds); fp32, seed {cfg.eval.seed}"
          + ("" if old else "; torchattacks is not installed, so its AutoAttack is not compared") + "\n")
    print("| model | " + " | ".join(attacks) + " | worst case | torchattacks AA - standard AA |")
    print("|---|" + "---|" * (len(attacks) + 2))
    for label, report in rows:
        acc, seconds = report["accuracy"], report["seconds"]
        cells = [f"{100 * acc[a]:.1f}" + ("" if a == "clean" else f" ({seconds[a]:.0f})") for a in attacks]
        gap = f"{100 * (acc['torchattacks AA'] - acc['autoattack']):+.1f}" if old else "-"
        print(f"| {label} | " + " | ".join(cells) + f" | {100 * report['robust']:.1f} | {gap} |")


if __name__ == "__main__":
    main()
