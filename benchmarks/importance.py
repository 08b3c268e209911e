"""How stable Optuna's hyperparameter importances are at a search's trial count: fANOVA against PED-ANOVA.

    python benchmarks/importance.py <experiment folder> [--sizes 8 16 24] [--draws 30]

For each size n, `--draws` times: n of the study's completed trials drawn without replacement, each
evaluator's importances on them, compared with the same evaluator's importances on all trials (Spearman's
rank correlation over the keys, and whether the most important key is the same). An evaluator that
reorders the keys when a few trials change says little about them at that count. The report
(`raygap.analysis.importances`) uses the evaluator this measures as the steadier.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raygap import study  # noqa: E402

EVALUATORS = {"fANOVA": lambda seed: optuna.importance.FanovaImportanceEvaluator(seed=seed),
              "PED-ANOVA": lambda seed: optuna.importance.PedAnovaImportanceEvaluator()}


def importances(trials: list, evaluator, directions) -> dict:
    subset = optuna.create_study(directions=directions)
    subset.add_trials(trials)
    target = (lambda t: t.values[0]) if len(directions) > 1 else None
    return optuna.importance.get_param_importances(subset, evaluator=evaluator, target=target, normalize=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 24])
    parser.add_argument("--draws", type=int, default=30)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    name = args.experiment.rstrip("/").rsplit("/", 1)[-1]
    loaded = optuna.load_study(study_name=name, storage=study.open_storage("", args.experiment))
    done = loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    keys = sorted(set.intersection(*(set(t.params) for t in done)))
    print(f"{name}: {len(done)} completed trials, keys {', '.join(keys)}\n")
    print("| evaluator | trials | Spearman with all trials (mean, 10th percentile) | same top key | seconds per call |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for label, make in EVALUATORS.items():
        full = importances(done, make(0), loaded.directions)
        order = [full.get(k, 0.0) for k in keys]
        for size in [s for s in args.sizes if s <= len(done)]:
            rhos, same, seconds = [], [], []
            for draw in range(args.draws):
                pick = [done[i] for i in rng.choice(len(done), size=size, replace=False)]
                start = time.perf_counter()
                found = importances(pick, make(draw + 1), loaded.directions)
                seconds.append(time.perf_counter() - start)
                rho = spearmanr(order, [found.get(k, 0.0) for k in keys]).statistic
                rhos.append(0.0 if rho != rho else rho)  # constant importances: no order at all
                same.append(max(found, key=found.get) == max(full, key=full.get))
            print(f"| {label} | {size} | {np.mean(rhos):.2f}, {np.quantile(rhos, 0.1):.2f} | {np.mean(same):.0%} "
                  f"| {np.mean(seconds):.2f} |")


if __name__ == "__main__":
    main()
