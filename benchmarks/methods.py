"""Every method from one natural model, side by side: test accuracy under attack, three seeds.

    python benchmarks/methods.py [--epochs 8] [--seeds 0 1 2] [--lrs 0.01 0.03 0.1] [--n 200] [overrides ...]

Each variant fine-tunes the same cached natural model for the same epochs with the same training
attack, at its own learning rate: the one of --lrs whose seed-0 run ends with the best robust accuracy
on the validation split (PGD-10; the test split plays no part in the choice). Then every seed is
evaluated on the test split with clean, PGD-20 and the standard AutoAttack, and the per-example worst
case over them. Prints a Markdown table of mean and standard deviation over seeds, the chosen learning
rate and the training seconds. Run again
with the same --storage, it reuses the trainings and evaluations it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import config, evaluate, pretrain, storage, train  # noqa: E402
from raygap.errors import Diverged  # noqa: E402

VARIANTS = [
    ("vAFT", ["method=vaft"]),
    ("AFD, official update, full D", ["method=afd"]),
    ("AFD, split update (raygap's variant), full D", ["method=afd", "method.update=split"]),
    ("AFD, official update, rank 32", ["method=afd", "method.disentangler_size=32"]),
    ("AFD, official update, rank 8", ["method=afd", "method.disentangler_size=8"]),
    ("AFD, official update, rank 2", ["method=afd", "method.disentangler_size=2"]),
    ("TRADES, fine-tuned", ["method=trades"]),
    ("MART, fine-tuned", ["method=mart"]),
    ("DRRDN (reconstructed), fine-tuned", ["method=drrdn"]),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--n", type=int, default=200, help="test examples (0: all)")
    parser.add_argument("--storage", default=tempfile.mkdtemp(prefix="raygap-bench-"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=cifar10 model=resnet18")
    args = parser.parse_args()

    base = [f"storage={args.storage}", f"train.epochs={args.epochs}", *args.overrides]
    natural = pretrain.run(config.load(base))["checkpoint"]
    attacks = ["clean", "pgd20", "autoattack"]
    evaluation = [f"eval.attacks=[{','.join(attacks)}]", f"eval.n={args.n}"]
    rows = [("natural (the start)", "", [evaluated(config.load(base + [f"checkpoint={natural}", *evaluation]))], [0.0])]
    for label, extra in VARIANTS:
        lr = choose_lr(base + extra + [f"pretrained={natural}", f"train.seed={args.seeds[0]}"], args.lrs)
        results, costs = [], []
        for seed in args.seeds:
            overrides = base + extra + [f"train.lr={lr}", f"train.seed={seed}", f"pretrained={natural}"]
            trained = train.run(config.load(overrides))
            costs.append(sum(r["wall_seconds"] for r in trained["history"]))
            results.append(evaluated(config.load(overrides + [f"checkpoint={trained['checkpoint']}", *evaluation])))
        rows.append((label, f"{lr:g}", results, costs))
        print_table(rows, attacks, args, file=sys.stderr)
    print_table(rows, attacks, args)


def evaluated(cfg) -> dict:
    """The evaluation of cfg.checkpoint: its eval.json from an earlier run of this benchmark, or a new one."""
    out = storage.join(cfg.checkpoint.rsplit("/", 1)[0], "eval.json")
    if storage.exists(out):
        saved = json.loads(storage.read_bytes(out))
        if saved["n_examples"] == (cfg.eval.n or saved["n_examples"]) and all(
                f"{a}_acc" in saved for a in cfg.eval.attacks):
            return saved
    return evaluate.run(cfg)


def choose_lr(overrides: list[str], lrs: list[float]) -> float:
    """The learning rate whose run ends with the best validation robust accuracy (then clean); a run
    that diverges counts as the worst."""
    def final(lr):
        try:
            metrics = train.run(config.load(overrides + [f"train.lr={lr}"]))["metrics"]
        except Diverged as err:
            print(f"  lr {lr:g}: {err}", file=sys.stderr, flush=True)
            return -1.0, -1.0
        print(f"  lr {lr:g}: validation robust {metrics['robust_acc']:.3f}, clean {metrics['clean_acc']:.3f}",
              file=sys.stderr, flush=True)
        return metrics["robust_acc"], metrics["clean_acc"]
    return max(lrs, key=final)


def mean_sd(values):
    values = [100 * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def print_table(rows, attacks, args, file=sys.stdout):
    print(f"\n{args.epochs} epochs, seeds {args.seeds}, test accuracy in % (mean ± sd over seeds)\n", file=file)
    print("| method | lr | " + " | ".join(attacks) + " | worst case | train seconds |", file=file)
    print("|---|---|" + "---|" * (len(attacks) + 2), file=file)
    for label, lr, results, costs in rows:
        cells = [mean_sd([r[key] for r in results]) for key in [f"{a}_acc" for a in attacks] + ["robust_acc"]]
        print(f"| {label} | {lr} | " + " | ".join(cells) + f" | {statistics.mean(costs):.0f} |", file=file)
    file.flush()


if __name__ == "__main__":
    main()
