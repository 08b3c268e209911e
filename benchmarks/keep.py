"""The epoch a trial keeps: its best by robust validation accuracy (train.keep=best) or its last, measured.

    python benchmarks/keep.py [--space afd] [--trials 16] [--storage DIR] [overrides]

Runs the same random search twice, once exporting each trial's best epoch and once its last: the same
seed draws the same configurations and trains them identically, so each configuration's two exported
models differ only in the epoch kept. Every trial's model is attacked on the whole test split (clean and
PGD-20 at eval.eps). Prints, for each choice: the mean test robust accuracy over the configurations, how
well the validation figure the search ranks by orders the configurations' test robust accuracy
(Spearman), and the test robust accuracy of the trial it would pick (its finalist). Both searches resume
when run again.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raygap import config, results, tune  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="afd")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--storage", default="./raygap_results")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    rows = {}
    for keep in ("best", "last"):
        # fifo and random: every configuration trained to the end, the same ones for both choices
        cfg = config.load([f"storage={args.storage}", f"name=keep-{keep}-{args.space}", f"train.keep={keep}",
                           "tune.algorithm=random", f"tune.num_samples={args.trials}", "tune.scheduler.name=fifo",
                           f"final_eval.top_k={args.trials}", "final_eval.attacks=[clean,pgd20]", "final_eval.n=0",
                           *args.overrides], args.space)
        folder = tune.run(cfg, args.space)["experiment_dir"]
        trials = results.read_table(folder, "trials").dropna(subset=["test_robust_acc"])
        rank_by = "kept_robust_acc"  # with train.keep=last, the last epoch's
        rows[keep] = (len(trials), trials.test_robust_acc.mean(), trials.test_clean_acc.mean(),
                      spearmanr(trials[rank_by], trials.test_robust_acc).statistic,
                      trials.sort_values(rank_by, ascending=False).test_robust_acc.iloc[0],
                      (trials.kept_epoch < trials.epochs).mean())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\n{args.space}, {args.trials} random configurations trained to the end; test split whole; commit {commit}; "
          f"{' '.join(sys.argv)}\n")
    print("| train.keep | trials tested | mean test robust (PGD-20) | mean test clean | Spearman: validation ranking "
          "vs test robust | finalist's test robust | trials whose kept epoch is not the last |")
    print("|---|---|---|---|---|---|---|")
    for keep, (n, robust, clean, rho, finalist, earlier) in rows.items():
        print(f"| {keep} | {n} | {robust:.3f} | {clean:.3f} | {rho:.2f} | {finalist:.3f} | {earlier:.0%} |")


if __name__ == "__main__":
    main()
