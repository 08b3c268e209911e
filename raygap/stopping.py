"""Early stopping of trials, per epoch: ASHA on the first objective, or Pareto-aware ASHA on all of them;
or, instead of stopping, population-based training.

Both stop trials at rungs, the epochs grace_period x reduction_factor^k before the last. ASHA (Ray's
`ASHAScheduler`) keeps a trial at a rung when its first objective is in the top 1/reduction_factor of
the trials recorded there so far. With several objectives that stops a trial at the clean end of the
clean/robust front for being less robust; `ParetoASHA` instead stops a trial only when enough trials
at its rung dominate it (are at least as good on every objective and better on one), in the spirit of
MO-ASHA (Schmucker et al., 2021: successive halving on non-dominated ranks).

PBT (Jaderberg et al., 2017; Ray's `PopulationBasedTraining`, asynchronous as Ray runs it by default): every
perturbation_interval epochs of its own, a trial of the bottom quarter takes the state of one of the top
quarter (exploit) and goes on with that trial's searched values perturbed (explore: x0.8 or x1.2, or
resampled with probability 0.25; a product outside the space is brought back to its bound, where Ray would
leave it: within_bounds), so a trial's learning rate and training epsilon may change during training: a
schedule found, not written. Asynchronous, so a parent may be ahead of or behind the trial it replaces:
runner.PopulationContext keeps the trial's own epochs up to the parent's. Its random draws come from a
generator seeded with tune.seed (SeededPBT). (Synchronous PBT, which waits for the whole population at each
perturbation, hung when a killed search was resumed: its paused trials were never resumed by the restored
scheduler.)
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import uuid

import numpy as np
import pyarrow.fs

from ray import tune
from ray.tune import Checkpoint
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler

from raygap import faults


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


def tune_distribution(d: dict):
    """A searched key's distribution as Ray Tune samples it (PBT's first population and its resampling)."""
    if d["type"] == "choice":
        return tune.choice(list(d["values"]))
    if d["type"] == "int":
        return (tune.lograndint if d["log"] else tune.randint)(int(d["low"]), int(d["high"]) + 1)
    return (tune.loguniform if d["type"] == "loguniform" else tune.uniform)(d["low"], d["high"])


class SeededPBT(PopulationBasedTraining):
    """Ray's PBT draws the donor it clones and the values it explores from Python's and NumPy's global
    generators, which nothing seeds: the same command explored differently each run. This one draws them
    from its own, seeded with tune.seed, so that a search replays its exploits and explores as long as its
    trials report in the same order (asynchronous PBT follows the order results arrive in), and leaves the
    global generators as they were."""

    def __init__(self, seed: int, **kwargs):
        super().__init__(**kwargs)
        self._draws = random.Random(seed).getstate(), np.random.RandomState(seed).get_state()

    @contextlib.contextmanager
    def own_draws(self):
        outside = random.getstate(), np.random.get_state()
        random.setstate(self._draws[0])
        np.random.set_state(self._draws[1])
        try:
            yield
        finally:
            self._draws = random.getstate(), np.random.get_state()
            random.setstate(outside[0])
            np.random.set_state(outside[1])

    def on_trial_result(self, tune_controller, trial, result):
        with self.own_draws():  # where PBT exploits and explores
            return super().on_trial_result(tune_controller, trial, result)

    def _exploit(self, tune_controller, trial, trial_to_clone):
        """Ray hands the clone the path of the donor's newest checkpoint, and the clone reads it when it next
        starts. The donor meanwhile trains on and deletes its oldest checkpoints (num_to_keep), so a clone
        that waits for a free slot, or a search killed before the clone restarted, may find the path gone
        (measured on CIFAR-10: a search resumed after a kill lost a member after one epoch, "Could not recover
        from checkpoint as it does not exist on storage anymore"; ray#8441). The clone gets a copy of its
        own instead, in its own folder: the search's state is saved naming the copy before the clone's older
        copies go, so at most one per trial outlives the exploit that made it."""
        super()._exploit(tune_controller, trial, trial_to_clone)
        handed = trial.run_metadata.checkpoint_manager._latest_checkpoint_result
        fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
        copy = f"{folder}/exploited_from_{trial_to_clone.trial_id}_{uuid.uuid4().hex[:8]}"  # a name no kill can reuse
        fs.create_dir(copy)  # a local filesystem makes no parent folder when a file is written
        pyarrow.fs.copy_files(handed.checkpoint.path, copy, source_filesystem=handed.checkpoint.filesystem,
                              destination_filesystem=fs, use_threads=False)  # threads are unsafe on S3 (ray's note)
        handed.checkpoint = Checkpoint(copy, filesystem=fs)
        # Ray changes the checkpoint manager in place, which the cached JSON of the trial's metadata does not see:
        # without this the saved search still names the clone's own older checkpoint, and a search killed now
        # restarts the clone from that under the donor's config (measured on the digits, tests/test_pbt.py)
        trial.run_metadata.invalidate_cache()
        tune_controller.checkpoint(force=True, wait=True)
        for older in fs.get_file_info(pyarrow.fs.FileSelector(folder)):
            if older.base_name.startswith("exploited_") and older.path != copy:
                fs.delete_dir(older.path)
        donor, own = self._trial_state[trial_to_clone].last_result, self._trial_state[trial].last_result
        explored = ", ".join(f"{key} {trial.config[key]:.3g}" if isinstance(trial.config[key], float)
                             else f"{key} {trial.config[key]}" for key in self._hyperparam_mutations)
        print(f"[pbt] {trial.trial_id} goes on from {trial_to_clone.trial_id}'s epoch {donor['epoch']} ({self._metric} "
              f"{donor[self._metric]:.3f} against its {own[self._metric]:.3f}) with {explored}", flush=True)
        faults.crash("exploited")


def within_bounds(bounds: dict, config: dict) -> dict:
    """An explored config with each searched number brought back inside the space. Ray's explore multiplies a
    value by 0.8 or 1.2 and leaves the product where it lands (measured on CIFAR-10: a training epsilon of
    14.5/255 in a space of at most 12/255, a weight decay under the space's least), so PBT would search a
    larger space than the fixed-setting search it is compared with, and train outside what the user asked."""
    for key, (low, high) in bounds.items():
        config[key] = type(config[key])(min(max(config[key], low), high))
    return config


def population_based_training(cfg) -> PopulationBasedTraining:
    o = cfg.tune.objectives[0]
    mutations = {key: list(d["values"]) if d["type"] == "choice" else tune_distribution(d)
                 for key, d in cfg.tune.space.items()}
    bounds = {key: (d["low"], d["high"]) for key, d in cfg.tune.space.items() if d["type"] != "choice"}
    return SeededPBT(cfg.tune.seed, time_attr="training_iteration", metric=o.metric, mode=str(o.mode),
                     perturbation_interval=cfg.tune.scheduler.perturbation_interval, hyperparam_mutations=mutations,
                     custom_explore_fn=functools.partial(within_bounds, bounds))


def scheduler(cfg) -> TrialScheduler:
    """The search's trial scheduler for `tune.scheduler`."""
    s, objectives = cfg.tune.scheduler, cfg.tune.objectives
    grace_period = min(s.grace_period, cfg.train.epochs)
    if s.name == "fifo":
        return FIFOScheduler()
    if s.name == "pbt":
        return population_based_training(cfg)
    if s.name == "pareto_asha":
        return ParetoASHA([(o.metric, str(o.mode)) for o in objectives], cfg.train.epochs, grace_period,
                          s.reduction_factor)
    return ASHAScheduler(metric=objectives[0].metric, mode=str(objectives[0].mode), time_attr="training_iteration",
                         max_t=cfg.train.epochs, grace_period=grace_period, reduction_factor=s.reduction_factor)
