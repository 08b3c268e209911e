"""Search efficiency: TPE + ASHA against random search without early stopping, at the same compute budget.

    python benchmarks/search.py [--seeds 0 1 2] [--trials 8] [--plot benchmarks/search_efficiency.png] [overrides ...]

For each seed, the default AFD search on digits runs twice in one Ray session: random search with
every trial run to the end (`--trials` trials), and TPE with ASHA given twice as many trials (ASHA
stops most of them early, so it spends about the same). Cost is the CPU- (or GPU-) seconds of all
epochs. Prints, per algorithm, the best validation robust accuracy reached within the smaller of the
two budgets, mean and spread over seeds, and plots best-so-far against cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import config, results, tune  # noqa: E402

ALGORITHMS = {
    "random, no early stopping": lambda n: ["tune.algorithm=random", "tune.scheduler.name=fifo",
                                            f"tune.num_samples={n}"],
    "TPE + ASHA": lambda n: ["tune.algorithm=tpe", "tune.scheduler.name=asha", f"tune.num_samples={2 * n}"],
}


def best_so_far(experiment_dir: str, cost_column: str) -> list:
    """[(cumulative cost, best robust accuracy of the trials finished by then)] in order of finishing."""
    trials = results.read_table(experiment_dir, "trials").dropna(subset=["ended_at"]).sort_values("ended_at")
    epochs = results.read_table(experiment_dir, "epochs")
    curve, best = [], 0.0
    for row in trials.itertuples():
        spent = epochs.loc[epochs.finished_at <= row.ended_at, cost_column].sum()
        if row.robust_acc == row.robust_acc:
            best = max(best, row.robust_acc)
        curve.append((spent, best))
    return curve


def at_budget(curve: list, budget: float) -> float:
    return max([best for spent, best in curve if spent <= budget] or [0.0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--plot", default="benchmarks/search_efficiency.png")
    parser.add_argument("--storage", default=tempfile.mkdtemp(prefix="raygap-search-"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    curves = {name: [] for name in ALGORITHMS}
    for seed in args.seeds:
        for name, extra in ALGORITHMS.items():
            cfg = config.load([f"storage={args.storage}", f"tune.seed={seed}", "final_eval.top_k=0",
                               *extra(args.trials), *args.overrides], tune.DEFAULT_SEARCH)
            summary = tune.run(cfg)
            cost = "gpu_seconds" if cfg.train.gpus_per_worker else "cpu_seconds"
            curves[name].append(best_so_far(summary["experiment_dir"], cost))

    unit = cost.replace("_seconds", "").upper()
    print(f"\nAFD search on {cfg.data.name}, {cfg.train.epochs} epochs per trial, seeds {args.seeds}\n")
    print(f"| algorithm | trials | {unit}-seconds spent | best robust acc at the common budget |")
    print("|---|---|---|---|")
    for name in ALGORITHMS:
        reached = []
        for i in range(len(args.seeds)):
            budget = min(curves[other][i][-1][0] for other in ALGORITHMS)
            reached.append(at_budget(curves[name][i], budget))
        spent = statistics.mean(c[-1][0] for c in curves[name])
        sd = statistics.stdev(reached) if len(reached) > 1 else 0.0
        print(f"| {name} | {len(curves[name][0])} | {spent:.0f} | {statistics.mean(reached):.3f} ± {sd:.3f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for color, name in zip(("tab:gray", "tab:blue"), ALGORITHMS):
        for i, curve in enumerate(curves[name]):
            ax.step([c for c, _ in curve], [b for _, b in curve], where="post", color=color, alpha=0.8,
                    label=name if i == 0 else None)
    ax.set_xlabel(f"{unit}-seconds spent")
    ax.set_ylabel("best robust validation accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
