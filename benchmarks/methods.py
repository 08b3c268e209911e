"""Every method from one natural model, side by side: test accuracy under attack, three seeds.

    python benchmarks/methods.py [--epochs 10] [--seeds 0 1 2] [--n 359] [overrides ...]

Each method fine-tunes the same cached natural model for the same epochs with the same training
attack (from-scratch PGD-AT also gets a longer run of its own, since it starts from random weights),
then is evaluated on the test split with clean, PGD-20 and AutoAttack. Prints a Markdown table of
mean and standard deviation over seeds, and the training cost in seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import config, evaluate, pretrain, train  # noqa: E402

VARIANTS = [
    ("vaft", []), ("pgd_at", []), ("pgd_at (30 epochs, lr 0.05)", ["method=pgd_at", "train.epochs=30", "train.lr=0.05"]),
    ("trades (beta 6)", ["method=trades"]), ("trades (beta 1)", ["method=trades", "method.beta=1"]),
    ("mart", []), ("afd", []), ("drrdn", []),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=0, help="test examples (0: all)")
    parser.add_argument("--storage", default=tempfile.mkdtemp(prefix="raygap-bench-"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=cifar10 model=resnet18")
    args = parser.parse_args()

    base = [f"storage={args.storage}", f"train.epochs={args.epochs}", *args.overrides]
    natural = pretrain.run(config.load(base))["checkpoint"]
    attacks = ["clean", "pgd20", "autoattack"]
    rows = [("natural (the start)", [evaluate.run(config.load(base + [
        f"checkpoint={natural}", f"eval.attacks=[{','.join(attacks)}]", f"eval.n={args.n}",
        f"eval.out={args.storage}/natural.json"]))], [0.0])]
    for label, extra in VARIANTS:
        results, costs = [], []
        for seed in args.seeds:
            overrides = base + ([f"method={label}"] if not extra else []) + extra + [f"train.seed={seed}", f"pretrained={natural}"]
            cfg = config.load(overrides)
            trained = train.run(cfg)
            costs.append(sum(r["wall_seconds"] for r in trained["history"]))
            results.append(evaluate.run(config.load(overrides + [
                f"checkpoint={trained['checkpoint']}", f"eval.attacks=[{','.join(attacks)}]", f"eval.n={args.n}"])))
        rows.append((label, results, costs))
        print_table(rows, attacks, args, file=sys.stderr)
    print_table(rows, attacks, args)


def mean_sd(values):
    values = [100 * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def print_table(rows, attacks, args, file=sys.stdout):
    print(f"\n{args.epochs} epochs, seeds {args.seeds}, test accuracy in % (mean ± sd over seeds)\n", file=file)
    print("| method | " + " | ".join(attacks) + " | train seconds |", file=file)
    print("|---|" + "---|" * (len(attacks) + 1), file=file)
    for label, results, costs in rows:
        cells = [mean_sd([r[f"{a}_acc"] for r in results]) for a in attacks]
        print(f"| {label} | " + " | ".join(cells) + f" | {statistics.mean(costs):.0f} |", file=file)
    file.flush()


if __name__ == "__main__":
    main()
