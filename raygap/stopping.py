"""Early stopping of trials, per epoch: ASHA on the first objective, or Pareto-aware ASHA on all of them.

Both stop trials at rungs, the epochs grace_period x reduction_factor^k before the last. ASHA (Ray's
`ASHAScheduler`) keeps a trial at a rung when its first objective is in the top 1/reduction_factor of
the trials recorded there so far. With several objectives that stops a trial at the clean end of the
clean/robust front for being less robust; `ParetoASHA` instead stops a trial only when enough trials
at its rung dominate it (are at least as good on every objective and better on one), in the spirit of
MO-ASHA (Schmucker et al., 2021: successive halving on non-dominated ranks).
"""

from __future__ import annotations

import math

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler


def rungs(max_t: int, grace_period: int, reduction_factor: int) -> list[int]:
    """The epochs at which trials are compared: grace_period x reduction_factor^k, below max_t."""
    out, t = [], max(1, grace_period)
    while t < max_t:
        out.append(t)
        t *= reduction_factor
    return out


def dominates(a: tuple, b: tuple) -> bool:
    """a is at least as good as b on every objective and better on one (values oriented so higher is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_keeps(values: tuple, recorded: list[tuple], reduction_factor: int) -> bool:
    """Whether a trial with `values` at a rung goes on, given the values of the trials recorded there
    before it: it is stopped when at least ceil(n / reduction_factor) of the n trials now at the rung
    (itself included) dominate it. One objective: stopped unless in about the top 1/reduction_factor."""
    dominators = sum(dominates(other, values) for other in recorded)
    return dominators < math.ceil((len(recorded) + 1) / reduction_factor)


class ParetoASHA(FIFOScheduler):
    """Asynchronous successive halving on several objectives: `pareto_keeps` at each rung."""

    def __init__(self, objectives: list[tuple[str, str]], max_t: int, grace_period: int, reduction_factor: int):
        super().__init__()
        self.objectives = objectives  # (metric, mode) pairs
        self.reduction_factor = reduction_factor
        self.recorded = {rung: {} for rung in rungs(max_t, grace_period, reduction_factor)}  # rung -> trial -> values

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are its own; Tune's single metric is not used

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        at_rung = self.recorded.get(result.get("training_iteration"))
        if at_rung is None or trial.trial_id in at_rung:
            return TrialScheduler.CONTINUE
        values = tuple(result[m] if mode == "max" else -result[m] for m, mode in self.objectives)
        keep = pareto_keeps(values, list(at_rung.values()), self.reduction_factor)
        at_rung[trial.trial_id] = values
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"Pareto-aware ASHA on {', '.join(m for m, _ in self.objectives)}, rungs at {sorted(self.recorded)}"


def scheduler(cfg) -> TrialScheduler:
    """The search's trial scheduler for `tune.scheduler`."""
    s, objectives = cfg.tune.scheduler, cfg.tune.objectives
    grace_period = min(s.grace_period, cfg.train.epochs)
    if s.name == "fifo":
        return FIFOScheduler()
    if s.name == "pareto_asha":
        return ParetoASHA([(o.metric, str(o.mode)) for o in objectives], cfg.train.epochs, grace_period,
                          s.reduction_factor)
    return ASHAScheduler(metric=objectives[0].metric, mode=str(objectives[0].mode), time_attr="training_iteration",
                         max_t=cfg.train.epochs, grace_period=grace_period, reduction_factor=s.reduction_factor)
