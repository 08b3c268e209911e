"""Search strategies replayed against a recorded grid: best robust accuracy against compute, with spread.

    python -m raygap.tune search=benchmarks/grids/afd_digits.yaml          # once: every configuration, to the end
    python benchmarks/search_replay.py raygap_results/afd_digits_grid [--replays 20] [--budget-trials 8]
    python benchmarks/search_replay.py <grid> --cheap <the same grid at a cheaper fidelity>   # + multi-fidelity

(A configuration whose trial failed for want of infrastructure can be run again as its own experiment
and its folder named after the grid's: benchmarks/grids/afd_cifar10_cpu_grid_fill.yaml.)

The grid's epochs table holds every configuration's whole learning curve and what each epoch cost, so a
search can be replayed without training (the approach of tabular HPO benchmarks): a replayed trial
costs the seconds its epochs cost when they ran, and an early-stopped one only the epochs it got. The
searchers are raygap's own (`searcher.sampler`, `searcher.suggest`: Optuna, seeded per replay); the
stoppers are ASHA's rule as Ray's `ASHAScheduler` applies it (a trial at a rung goes on when its value
is at least the (1 - 1/reduction_factor) quantile of the values recorded there, itself included) and
raygap's Pareto-aware rule (`stopping.pareto_keeps`). Trials run one at a time (Tune runs
`tune.max_concurrent` at once, so a replay's rungs fill in a slightly different order).

Prints, per strategy: the best final robust validation accuracy of the completed trials within the
budget (`--budget-trials` full trials' compute), mean and sd over the replays; the compute each needed
to reach random search's mean best at that budget, as a fraction of the budget, median over all the
replays (one that never reached it counts as never), with how many reached it; and, per rung, the Spearman
rank correlation between the robust accuracy there and at the last epoch over all configurations
(how safe it is to stop on it). Plots best-so-far against compute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from omegaconf import OmegaConf  # noqa: E402

from raygap import results, searcher  # noqa: E402
from raygap.stopping import pareto_keeps, rungs  # noqa: E402


class GridError(Exception):
    """The recorded grid cannot answer a replay."""


@dataclass
class Grid:
    """The recorded configurations: searched values -> per-epoch (robust, clean, seconds)."""

    space: dict  # the grid's searched keys, as choices
    curves: dict  # tuple of the searched values (in space order) -> list of (robust_acc, clean_acc, seconds)
    epochs: int

    def curve(self, params: dict) -> list:
        key = tuple(params[k] for k in self.space)
        if key not in self.curves:
            raise GridError(f"the grid has no configuration {params}: record it (or replay a space inside the grid)")
        return self.curves[key]

    def best(self) -> float:
        return max(curve[-1][0] for curve in self.curves.values())


def load_grid(*experiment_dirs: str) -> Grid:
    """Read grid experiments' tables (a grid, and any experiment that re-ran configurations whose trials
    failed in it): the completed trials' params and their epochs."""
    import pandas as pd

    for experiment_dir in experiment_dirs:
        if not os.path.isdir(os.path.join(experiment_dir, "trials")):
            raise GridError(f"{experiment_dir} holds no trials table: record a grid first "
                            f"(python -m raygap.tune search=benchmarks/grids/afd_digits.yaml)")
    trials = pd.concat([results.read_table(d, "trials") for d in experiment_dirs], ignore_index=True)
    epochs = pd.concat([results.read_table(d, "epochs") for d in experiment_dirs], ignore_index=True)
    done = trials[trials.status == "completed"]
    if done.empty:
        raise GridError(f"{', '.join(experiment_dirs)} has no completed trial")
    params = {row.trial_id: json.loads(row.params) for row in done.itertuples()}
    keys = list(next(iter(params.values())))
    space = {k: {"type": "choice", "values": sorted({p[k] for p in params.values()})} for k in keys}
    cost = "gpu_seconds" if epochs.gpu_seconds.sum() > 0 else "cpu_seconds"
    curves = {}
    for trial_id, p in params.items():
        mine = epochs[epochs.trial_id == trial_id].sort_values("epoch")
        curves[tuple(p[k] for k in keys)] = list(zip(mine.robust_acc, mine.clean_acc, mine[cost]))
    return Grid(space, curves, int(done.epochs.max()))


def asha_keeps(value: float, recorded: list[float], reduction_factor: int) -> bool:
    """Ray's ASHA at a rung: go on when the value is at least the (1 - 1/rf) quantile of the rung's values."""
    import numpy as np

    return value >= np.nanpercentile([*recorded, value], (1 - 1 / reduction_factor) * 100)


@dataclass
class Strategy:
    name: str
    algorithm: str  # searcher.sampler's: random, tpe, gp, nsga2
    stopper: str  # none, asha (on robust accuracy), pareto (on robust and clean)
    sized: bool = False  # tune.startup_trials sized to the budget (startup_for), else Optuna's 10
    multivariate: bool | None = None  # tune.multivariate (TPE); None: Optuna's default, joint for one objective
    cheap_first: bool = False  # multi-fidelity: each configuration trains at the cheap grid's fidelity first


OPTUNA_STARTUP = 10  # TPESampler's and GPSampler's n_startup_trials when none is given


def startup_for(budget_trials: float) -> int:
    """The replay's sized start-up: a third of the budget's full trials, at least 2. A replay knows its
    compute, not how many trials it will start; raygap's searches know tune.num_samples, and size it at a
    quarter of those (searcher.sized_startup), about the same under ASHA."""
    return max(2, int(budget_trials // 3))


STRATEGIES = [Strategy("random", "random", "none"), Strategy("TPE", "tpe", "none"),
              Strategy("TPE + ASHA", "tpe", "asha"), Strategy("NSGA-II + ASHA (robust)", "nsga2", "asha"),
              Strategy("NSGA-II + Pareto ASHA", "nsga2", "pareto"),
              Strategy("TPE, start-up sized", "tpe", "none", sized=True),
              Strategy("TPE independent, start-up sized", "tpe", "none", sized=True, multivariate=False),
              Strategy("TPE, start-up sized + ASHA", "tpe", "asha", sized=True),
              Strategy("GP, start-up sized", "gp", "none", sized=True),
              Strategy("GP, start-up sized + ASHA", "gp", "asha", sized=True)]
# Multi-fidelity with a cheaper attack as the low fidelity (Mendes, Romano and Garlan, arXiv 2304.02497):
# replayed only when a grid of the same configurations at that fidelity is given (--cheap)
CHEAP_FIRST = [Strategy("random, cheap attack first", "random", "none", cheap_first=True),
               Strategy("TPE, start-up sized, cheap attack first", "tpe", "none", sized=True, cheap_first=True),
               Strategy("GP, start-up sized, cheap attack first", "gp", "none", sized=True, cheap_first=True)]


def as_steps(space: dict) -> dict:
    """The grid's numeric choices as ordered steps (the index of the value, an int), for a replay that models
    the order of the values, as a sampler does over the real space's ranges; a categorical choice does not
    know that 0.01 lies between 0.003 and 0.03. Neighbouring values are then one step apart, as the grids'
    roughly are (in log for the rates and decays)."""
    return {k: {"type": "int", "low": 0, "high": len(d["values"]) - 1, "log": False}
            for k, d in space.items() if all(isinstance(v, (int, float)) for v in d["values"])}


def replay(grid: Grid, strategy: Strategy, seed: int, budget: float, grace_period: int = 2,
           reduction_factor: int = 2, choose=None, startup: int = 2, cheap: Grid | None = None,
           ordered: bool = False, first: dict | None = None) -> list:
    """One search until `budget` seconds are spent; returns [(seconds spent, best final robust, front)]
    after each trial. `choose(history)`, if given, picks the configuration instead of Optuna; `startup`
    is the start-up of a strategy sized to the budget (main: startup_for; by default 2, the least);
    `ordered`: the searcher sees the numeric choices as ordered steps (as_steps); `first`: the configuration
    every search tries first, as raygap's searches try their space's defaults (tune.try_defaults).

    A strategy with `cheap_first` trains each configuration at the fidelity of `cheap` (the same
    configurations recorded with a cheaper training attack, say) and pays its whole curve; the
    configuration trains at the full fidelity, from the start, only when its cheap final robust accuracy
    is in the top 1/reduction_factor of the cheap ones so far (ASHA's rule, with the cheap run as the
    rung). Its best is of full-fidelity runs alone, and the searcher is told the last value it saw."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    two = strategy.algorithm == "nsga2"
    steps = as_steps(grid.space) if ordered else {}  # the keys the searcher sees as steps, not values
    searched = {**grid.space, **steps}
    cfg = OmegaConf.create({"tune": {"algorithm": strategy.algorithm, "seed": seed, "space": searched,
                                     "objectives": [{}, {}] if two else [{}],
                                     "startup_trials": startup if strategy.sized else OPTUNA_STARTUP,
                                     "multivariate": strategy.multivariate}})
    study = optuna.create_study(directions=["maximize"] * (2 if two else 1), sampler=searcher.sampler(cfg))
    if first:
        study.enqueue_trial({k: grid.space[k]["values"].index(v) if k in steps else v for k, v in first.items()})
    at_rung = {r: [] for r in rungs(grid.epochs, grace_period, reduction_factor)}
    at_cheap = []  # the cheap runs' final robust accuracies (cheap_first)
    spent, best, completed, out = 0.0, 0.0, [], []
    while spent < budget:
        trial = None if choose else study.ask()
        if trial is None:
            params = choose(out)
        else:
            searcher.suggest(trial, searched)
            params = {k: grid.space[k]["values"][v] if k in steps else v for k, v in trial.params.items()}
        curve = grid.curve(params)
        if strategy.cheap_first:
            cheap_curve = cheap.curve(params)
            spent += sum(seconds for _, _, seconds in cheap_curve)
            robust, clean, _ = cheap_curve[-1]
            promoted = asha_keeps(robust, at_cheap, reduction_factor)
            at_cheap.append(robust)
            curve = curve if promoted else []
        for epoch, (robust, clean, seconds) in enumerate(curve, 1):
            spent += seconds
            if epoch in at_rung and strategy.stopper != "none":
                keep = (asha_keeps(robust, at_rung[epoch], reduction_factor) if strategy.stopper == "asha"
                        else pareto_keeps((robust, clean), at_rung[epoch], reduction_factor))
                at_rung[epoch].append(robust if strategy.stopper == "asha" else (robust, clean))
                if not keep:
                    break
        else:
            if curve:  # a full-fidelity run, to its end
                completed.append((robust, clean))
                best = max(best, robust)
        if trial is not None:  # Tune tells the searcher the last reported values, truncated ones included
            study.tell(trial, [robust, clean] if two else robust)
        out.append((spent, best, list(completed)))
    return out


def at_budget(curve: list, budget: float) -> float:
    return max([best for spent, best, _ in curve if spent <= budget] or [0.0])


def compute_to_reach(curve: list, target: float) -> float | None:
    return next((spent for spent, best, _ in curve if best >= target), None)


def hypervolume(points: list) -> float:
    """The area dominated by (robust, clean) points above (0, 0): the larger, the better the front."""
    area, height = 0.0, 0.0
    for robust, clean in sorted(points, reverse=True):  # by robust accuracy, highest first
        if clean > height:
            area += robust * (clean - height)
            height = clean
    return area


def front_at_budget(curve: list, budget: float) -> float:
    return max([hypervolume(done) for spent, _, done in curve if spent <= budget] or [0.0])


def rung_correlations(grid: Grid, grace_period: int, reduction_factor: int) -> dict:
    """Spearman correlation between robust accuracy at each rung and at the last epoch, over the configurations."""
    import pandas as pd

    final = pd.Series([c[-1][0] for c in grid.curves.values()])
    return {r: pd.Series([c[r - 1][0] for c in grid.curves.values()]).corr(final, method="spearman")
            for r in rungs(grid.epochs, grace_period, reduction_factor)}


def first_configuration(grid: Grid, items: list) -> dict:
    """--first's KEY=VALUE items as one of the grid's configurations (empty: none)."""
    try:
        first = {key: float(value) for key, value in (item.split("=", 1) for item in items)}
    except ValueError:
        raise GridError(f"--first takes KEY=VALUE with a number, one per key of the grid, not {items}") from None
    if first and set(first) != set(grid.space):
        raise GridError(f"--first names {sorted(first)}: give one value of each of the grid's keys {list(grid.space)}")
    if first:
        grid.curve(first)  # one of the grid's configurations, or its error
    return first


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", nargs="+",
                        help="the grid experiment folder (and any that re-ran configurations that failed in it)")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--budget-trials", type=float, default=8, help="the budget, in full trials' compute")
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=int, default=2)
    parser.add_argument("--ordered", action="store_true",
                        help="the searchers see numeric choices as ordered steps, as they see the real space's "
                             "ranges (the default: as categories, which is how the grid file lists them)")
    parser.add_argument("--first", nargs="+", default=[], metavar="KEY=VALUE",
                        help="the configuration every search tries first, as raygap tries the space's defaults "
                             "(tune.try_defaults): one value of each of the grid's keys")
    parser.add_argument("--startup", type=int, default=None,
                        help="the sized start-up, in trials (default: a third of --budget-trials, at least 2)")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="replay only these strategies (and random, the yardstick), by name")
    parser.add_argument("--plot", default="")
    parser.add_argument("--cheap", nargs="+", default=[],
                        help="the same configurations recorded at a cheaper fidelity (grids/*_pgd1.yaml): "
                             "also replay the multi-fidelity strategies that train there first")
    args = parser.parse_args(argv)
    available = STRATEGIES + (CHEAP_FIRST if args.cheap else [])  # the cheap-first ones need --cheap
    names = [s.name for s in available]
    if set(args.only) - set(names):
        parser.error(f"--only names no strategy {sorted(set(args.only) - set(names))}; the strategies: {names}")
    try:
        grid = load_grid(*args.grid)
        cheap = load_grid(*args.cheap) if args.cheap else None
        if cheap and (set(cheap.space) != set(grid.space) or
                      not all(tuple(dict(zip(grid.space, key))[k] for k in cheap.space) in cheap.curves
                              for key in grid.curves)):
            raise GridError(f"{' + '.join(args.cheap)} does not hold every configuration of {' + '.join(args.grid)}: "
                            "record the cheap grid over the same space")
        first = first_configuration(grid, args.first)
    except GridError as err:
        print(f"search_replay: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    strategies = [s for s in available if not args.only or s.name in args.only or s.name == "random"]
    full_trial = statistics.mean(sum(s for _, _, s in c) for c in grid.curves.values())
    budget = args.budget_trials * full_trial
    startup = args.startup if args.startup is not None else startup_for(args.budget_trials)
    curves = {s.name: [replay(grid, s, seed, budget, args.grace_period, args.reduction_factor, startup=startup,
                              cheap=cheap, ordered=args.ordered, first=first) for seed in range(args.replays)]
              for s in strategies}
    target = statistics.mean(at_budget(c, budget) for c in curves["random"])
    print(f"grid {' + '.join(args.grid)}: {len(grid.curves)} configurations x {grid.epochs} epochs, "
          f"best final robust accuracy {grid.best():.3f}; budget {args.budget_trials:g} full trials ({budget:.0f} s); "
          f"{args.replays} replays; rungs at {rungs(grid.epochs, args.grace_period, args.reduction_factor)}; "
          f"a sized start-up is {startup} trials; numeric choices searched as "
          f"{'ordered steps' if args.ordered else 'categories'}"
          f"{'; every search tries ' + ' '.join(args.first) + ' first' if first else ''}\n")
    print(f"| strategy | trials run | best robust acc at the budget | compute to reach random's mean best "
          f"({target:.3f}) | hypervolume of the (robust, clean) front |")
    print("|---|---|---|---|---|")
    rows = []
    for s in strategies:
        reached = [at_budget(c, budget) for c in curves[s.name]]
        needed = [compute_to_reach(c, target) for c in curves[s.name]]
        # the median over every replay, one that never reached it counting as never (not the median of those
        # that did: that would favour a strategy that reaches it rarely, and then early)
        share = statistics.median(n / budget if n is not None else float("inf") for n in needed)
        hit = [n for n in needed if n is not None]
        median = f"{share:.2f} of the budget" if share < float("inf") else "not reached in most"
        fronts = [front_at_budget(c, budget) for c in curves[s.name]]
        print(f"| {s.name} | {statistics.mean(len(c) for c in curves[s.name]):.1f} | "
              f"{statistics.mean(reached):.3f} ± {statistics.stdev(reached):.3f} | "
              f"{median} ({len(hit)}/{len(needed)}) | "
              f"{statistics.mean(fronts):.3f} ± {statistics.stdev(fronts):.3f} |")
        rows.append((s.name, reached, needed))
    print("\n| rung (epoch) | Spearman: robust acc there vs at the last epoch |\n|---|---|")
    for rung, rho in rung_correlations(grid, args.grace_period, args.reduction_factor).items():
        print(f"| {rung} | {rho:.2f} |")
    if args.plot:
        plot(curves, budget, args.plot)
    return rows


def plot(curves: dict, budget: float, path: str):
    """Mean best-so-far over the replays against compute, with a band of one standard deviation."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spent = np.linspace(0, budget, 200)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in curves.items():
        best = np.array([[at_budget(curve, x) for x in spent] for curve in runs])
        mean, sd = best.mean(0), best.std(0)
        ax.plot(spent, mean, label=name)
        ax.fill_between(spent, mean - sd, mean + sd, alpha=0.15)
    ax.set_xlabel("seconds of training spent (replayed)")
    ax.set_ylabel("best final robust validation accuracy")
    top = max(line.get_ydata().max() for line in ax.get_lines())
    ax.set_ylim(top - 0.06, top + 0.005)  # the last few points of accuracy, where the strategies differ
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
