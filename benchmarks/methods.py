"""Every method from one natural model, side by side: test accuracy under attack, three seeds.

    python benchmarks/methods.py [--epochs 8] [--seeds 0 1 2] [--lrs 0.01 0.03 0.1] [--n 200] [overrides ...]
    python benchmarks/methods.py --space afd_cifar10_cpu --variants vaft afd trades mart --lrs 0.01 0.03 \
        --n 1000 data.root=<CIFAR-10 image tree>          # real CIFAR-10 on two CPU cores

Each variant fine-tunes the same cached natural model (of --space, a file of search_spaces/) for the
same epochs with the same training attack, at its own learning rate: the one of --lrs whose first-seed
run ends with the best robust accuracy on the validation split (PGD-10; the test split plays no part
in the choice). Every run is evaluated on the test split with clean, PGD-20 and the standard
AutoAttack, and the per-example worst case over them. The seeds run one after the other over all
variants, and a Markdown table (mean and standard deviation over the seeds done, the chosen learning
rate, training and AutoAttack seconds) is printed after each, so a partial run already compares every
variant. Run again with the same --storage, it reuses the trainings and evaluations it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import config, robustness, runner, storage, train  # noqa: E402
from raygap.errors import Diverged  # noqa: E402

VARIANTS = {
    "vaft": ("vAFT", ["method=vaft"]),
    "afd": ("AFD, official update, full D", ["method=afd"]),
    "afd-torch2": ("AFD, official update with today's SGD decay (2x, not 3x), full D",
                   ["method=afd", "method.update=official_torch2"]),
    "afd-split": ("AFD, split update (raygap's variant), full D", ["method=afd", "method.update=split"]),
    "afd-r32": ("AFD, official update, rank 32", ["method=afd", "method.disentangler_size=32"]),
    "afd-r8": ("AFD, official update, rank 8", ["method=afd", "method.disentangler_size=8"]),
    "afd-r2": ("AFD, official update, rank 2", ["method=afd", "method.disentangler_size=2"]),
    "trades": ("TRADES, fine-tuned", ["method=trades"]),
    "mart": ("MART, fine-tuned", ["method=mart"]),
    "drrdn": ("DRRDN (reconstructed), fine-tuned", ["method=drrdn"]),
}
ATTACKS = ["clean", "pgd20", "autoattack"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="raygap", help="the search space whose settings every run starts from")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the space's train.epochs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--n", type=int, default=200, help="test examples (0: all)")
    parser.add_argument("--storage", default=tempfile.mkdtemp(prefix="raygap-bench-"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=cifar10 model=resnet18")
    args = parser.parse_args(argv)

    base = [f"storage={args.storage}", *args.overrides]
    if args.epochs:
        base.append(f"train.epochs={args.epochs}")
    load = lambda overrides: config.load(overrides, args.space, search=False)  # noqa: E731
    args.epochs = load(base).train.epochs
    evaluation = [f"eval.attacks=[{','.join(ATTACKS)}]", f"eval.n={args.n}"]
    natural = runner.natural_model(load(base))["checkpoint"]
    start = evaluated(load(base + [f"checkpoint={natural}", *evaluation]))
    rows = {"natural": ("natural (the start)", "", [start], [0.0])}
    rates = {}
    for seed in args.seeds:
        for key in args.variants:
            label, extra = VARIANTS[key]
            start = base + extra + [f"pretrained={natural}"]
            if key not in rates:
                rates[key] = choose_lr(load, start + [f"train.seed={seed}"], args.lrs)
            overrides = start + [f"train.lr={rates[key]}", f"train.seed={seed}"]
            trained = train.run(load(overrides))
            _, _, results, costs = rows.setdefault(key, (label, f"{rates[key]:g}", [], []))
            costs.append(sum(r["wall_seconds"] for r in trained["history"]))
            results.append(evaluated(load(overrides + [f"checkpoint={trained['checkpoint']}", *evaluation])))
        print_table(rows.values(), args, file=sys.stderr)
    print_table(rows.values(), args)
    return rows


def evaluated(cfg) -> dict:
    """The evaluation of cfg.checkpoint: its eval.json from an earlier run of this benchmark, or a new one."""
    out = storage.join(cfg.checkpoint.rsplit("/", 1)[0], "eval.json")
    if storage.exists(out):
        saved = json.loads(storage.read_bytes(out))
        if saved["n_examples"] == (cfg.eval.n or saved["n_examples"]) and all(
                f"{a}_acc" in saved for a in cfg.eval.attacks):
            return saved
    return robustness.evaluate_checkpoint(cfg)


def choose_lr(load, overrides: list[str], lrs: list[float]) -> float:
    """The learning rate whose run ends with the best validation robust accuracy (then clean); a run
    that diverges counts as the worst."""
    def final(lr):
        try:
            metrics = train.run(load(overrides + [f"train.lr={lr}"]))["metrics"]
        except Diverged as err:
            print(f"  lr {lr:g}: {err}", file=sys.stderr, flush=True)
            return -1.0, -1.0
        print(f"  lr {lr:g}: validation robust {metrics['robust_acc']:.3f}, clean {metrics['clean_acc']:.3f}",
              file=sys.stderr, flush=True)
        return metrics["robust_acc"], metrics["clean_acc"]
    return lrs[0] if len(lrs) == 1 else max(lrs, key=final)


def mean_sd(values):
    values = [100 * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def print_table(rows, args, file=sys.stdout):
    print(f"\n{args.space}, {args.epochs} epochs, seeds {args.seeds}, test accuracy in % (mean ± sd over the "
          f"seeds done)\n", file=file)
    print("| method | lr | seeds | " + " | ".join(ATTACKS) + " | worst case | train s | AutoAttack s |", file=file)
    print("|---|---|---|" + "---|" * (len(ATTACKS) + 3), file=file)
    for label, lr, results, costs in rows:
        cells = [mean_sd([r[key] for r in results]) for key in [f"{a}_acc" for a in ATTACKS] + ["robust_acc"]]
        attack_seconds = statistics.mean(r["seconds"]["autoattack"] for r in results)
        print(f"| {label} | {lr} | {len(results)} | " + " | ".join(cells) +
              f" | {statistics.mean(costs):.0f} | {attack_seconds:.0f} |", file=file)
    file.flush()


if __name__ == "__main__":
    main()
