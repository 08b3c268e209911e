"""The Optuna side of the search: the space, the sampler, the study, and warm starts from earlier searches."""

from __future__ import annotations

import functools
import json
import math
import threading
from dataclasses import dataclass

import optuna
from omegaconf import OmegaConf
from ray.tune.search.optuna import OptunaSearch

from raygap import faults, layout, ray_compat, results, storage, study
from raygap.errors import UserError
from raygap.schema import as_dict, search_algorithm


def suggest(trial, space: dict) -> None:
    """Optuna define-by-run: suggest each searched key, skipping those whose `when` does not hold. Keys with
    a `when` come after the others, so the keys they depend on are chosen first, wherever a file lists them."""
    chosen = {}
    for key, d in _in_order(space):
        if not _applies(d, chosen):
            continue
        if d["type"] == "choice":
            chosen[key] = trial.suggest_categorical(key, d["values"])
        elif d["type"] == "int":
            chosen[key] = trial.suggest_int(key, int(d["low"]), int(d["high"]), log=d["log"])
        else:
            chosen[key] = trial.suggest_float(key, d["low"], d["high"], log=d["type"] == "loguniform")


def _in_order(space: dict) -> list:
    """The searched keys, those with a `when` after the others (stable: otherwise in the file's order)."""
    return sorted(space.items(), key=lambda item: bool(item[1].get("when")))


def _applies(d: dict, chosen: dict) -> bool:
    """Whether a searched key's `when` holds for the values chosen so far."""
    return all(chosen.get(other) in allowed for other, allowed in (d.get("when") or {}).items())


def defaults_point(cfg) -> dict:
    """The config's own value of each searched key that lies in its range (and whose `when` holds): the
    first trial of a search with tune.try_defaults, so that no search ends below its defaults for want of
    trying them (with 8 random trials in a 7-key space it can, as measured on digits: benchmarks/README.md).
    Keys whose default lies outside the space are left to the sampler."""
    point = {}
    for key, d in _in_order(as_dict(cfg.tune.space)):
        value = cfg.method.name if key == "method" else OmegaConf.select(cfg, key)
        if _applies(d, point) and _inside(d, value):
            point[key] = value
    return point


def distribution(d: dict):
    """The Optuna distribution that `suggest` samples a searched key from."""
    od = optuna.distributions

    if d["type"] == "choice":
        return od.CategoricalDistribution(d["values"])
    if d["type"] == "int":
        return od.IntDistribution(int(d["low"]), int(d["high"]), log=d["log"])
    return od.FloatDistribution(d["low"], d["high"], log=d["type"] == "loguniform")


def sized_startup(trials: int) -> int:
    """The random start-up of TPE or GP for a search of `trials` trials: a quarter of them, at least 2, at
    most all. Optuna's own 10 is the whole of a search of 10 trials or fewer, so its TPE or GP is random
    search there. The replayed grids (benchmarks/README.md) were searched best with a start-up of a third
    of the budget's compute in full trials; with ASHA a search starts about 1.4 trials per full trial's
    compute, so that is about a quarter of the trials (on the widened CIFAR-10 grid at 13 trials: 3 random
    trials reached random search's best in 0.35 of its compute, 4 in 0.41; at 9 and 16 trials a quarter
    and a third were within 0.02)."""
    return min(trials, max(2, trials // 4))


def sampler(cfg, told: int = 0):
    """Optuna's sampler of tune.algorithm, seeded with tune.seed; `told`: how many trials the study holds from
    an earlier Tune run whose state is lost, added to the seed so that the new run does not draw them again."""
    t, seed = cfg.tune, cfg.tune.seed + told
    given = t.get("startup_trials")
    startup = given if given is not None else sized_startup(t.num_samples)
    joint = {} if t.get("multivariate") is None else {"multivariate": bool(t.multivariate)}
    # GP models only the keys every trial has: a key with `when` is drawn at random, and Optuna would warn
    # so at every trial (the `when` keys are conditional by design: suggest)
    return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, **joint),
            "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup,
                                                    warn_independent_sampling=False),
            "nsga2": lambda: PicklableNSGAIISampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "grid": lambda: optuna.samplers.GridSampler({k: list(d["values"]) for k, d in t.space.items()},
                                                        seed=seed)}[search_algorithm(cfg)]()


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, which Tune can pickle: since Optuna 5.1 its genetic samplers hold a threading.Lock
    (optuna/samplers/_ga/_base.py), and Tune pickles the searcher with the Tuner and at every save. The
    lock only guards this process's threads, so a restored sampler gets a new one."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def searcher(cfg, experiment: str, experiment_dir: str, warm: WarmStart | None = None, earlier: bool = False):
    """Tune's searcher: Optuna's, on the experiment's study (raygap.study), at most tune.max_concurrent
    trials at a time; the study is told the warm start's trials first, and the defaults point (tune.try_defaults)
    unless the study was begun by an `earlier` Tune run (whose state is lost: tune_state), which told it."""
    from ray.tune.search import ConcurrencyLimiter

    objectives = list(cfg.tune.objectives)
    metric = [o.metric for o in objectives] if len(objectives) > 1 else objectives[0].metric
    mode = [str(o.mode) for o in objectives] if len(objectives) > 1 else str(objectives[0].mode)
    study_storage = study.open_storage(cfg.tune.optuna_storage, experiment_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line for the study's creation
    if warm:
        warm.tell(optuna.create_study(study_name=experiment, storage=study_storage, load_if_exists=True,
                                      directions=[f"{o.mode}imize" for o in objectives]))
    space = functools.partial(suggest, space=as_dict(cfg.tune.space))
    told = len(optuna.load_study(study_name=experiment, storage=study_storage).trials) if earlier else 0
    first = defaults_point(cfg) if cfg.tune.try_defaults and search_algorithm(cfg) != "grid" and not earlier else {}
    search = ResumableOptunaSearch(space=space, metric=metric, mode=mode, sampler=sampler(cfg, told),
                                   study_name=experiment, storage=study_storage,
                                   points_to_evaluate=[first] if first else None)
    return ConcurrencyLimiter(search, max_concurrent=cfg.tune.max_concurrent)


def first_population(cfg):
    """PBT's first population: Tune's own random sampling of the space (Ray's PBT refuses a searcher),
    seeded, the config's own values first with tune.try_defaults. The whole population is created at once
    (tune.max_concurrent does not apply): PBT pauses a trial it replaces until it restarts from its parent's
    state, and a limit on live trials would count the paused ones against the rest."""
    from ray.tune.search import BasicVariantGenerator

    first = defaults_point(cfg) if cfg.tune.try_defaults else {}
    return BasicVariantGenerator(points_to_evaluate=[first] if first else None, random_state=cfg.tune.seed)


TUNE_TRIAL_ID = "tune_trial_id"  # an Optuna trial's user attribute: the Tune trial it was asked for


class ResumableOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, for a study that is ahead of the searcher state a resumed search restores.

    Tune saves its searcher now and then, the study is written at once. When a driver is killed in
    between, the resumed search runs again a trial whose end the study holds already; its last epoch is
    reported again, Ray's OptunaSearch reports it to Optuna, and Optuna's refusal
    (UpdateFinishedTrialError) ends the search. Results of a trial the study has finished are dropped.
    """

    def suggest(self, trial_id: str):
        # The study names the Tune trial of each of its trials: a driver whose Tune state is lost finds there
        # which trials the study was told had ended (recorder.Recorder.settle)
        suggestion = super().suggest(trial_id)
        asked = ray_compat.optuna_asked(self, trial_id)
        if asked is not None:
            asked.set_user_attr(TUNE_TRIAL_ID, trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict):
        optuna_study, number = ray_compat.optuna_trial(self, trial_id)
        if number is not None and optuna_study.get_trials(deepcopy=False)[number].state.is_finished():
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        super().on_trial_complete(trial_id, result, error)  # Optuna's tell: an append to the journal
        faults.crash("journal_append")


def warm_start_dir(cfg) -> str:
    """The earlier experiment's folder: tune.warm_start as a folder with a trials table, else a name under storage."""
    source = cfg.tune.warm_start
    for candidate in (source, layout.experiment(cfg.storage, source)):
        if storage.exists(layout.table(candidate, "trials")):
            return candidate
    raise UserError(f"tune.warm_start: no experiment '{source}' (neither a folder with a trials table nor a name "
                    f"under {cfg.storage}); name an earlier search's experiment")


@dataclass
class WarmStart:
    """An earlier experiment's completed trials, as Optuna trials of this search's space."""

    source: str
    trials: list
    completed: int  # how many trials the earlier experiment completed

    def tell(self, optuna_study) -> None:
        """Add the trials to the study, once (a resumed search's study has them already)."""
        if any("warm_start" in t.user_attrs for t in optuna_study.get_trials(deepcopy=False)):
            return
        optuna_study.add_trials(self.trials)
        print(f"warm start: {len(self.trials)} of the {self.completed} completed trials of {self.source} told to "
              f"the searcher (not retrained)", flush=True)


def warm_start(cfg) -> WarmStart:
    """Read tune.warm_start's trials table; refuses an experiment that is missing or searched none of these keys.

    A searched key takes the value the earlier trial trained with (from its config, searched there or
    not); a value outside this space's range is left out, and a trial left with no key is not reused.
    """

    source = warm_start_dir(cfg)
    frame = results.read_table(source, "trials")
    space = as_dict(cfg.tune.space)
    searched_before = {key for params in frame["params"].dropna() for key in json.loads(params)}
    if not searched_before & space.keys():
        searched = ', '.join(sorted(searched_before)) or 'nothing'
        raise UserError(f"tune.warm_start: experiment {source} searched {searched}, "
                        f"which shares no key with this space ({', '.join(space)})")
    objectives = list(cfg.tune.objectives)
    completed = frame[frame.status == "completed"]
    trials = []
    for row in completed.to_dict("records"):
        # a table from before trials kept their best epoch has no kept_* figures: its trials kept their last
        values = [_missing_to(row.get(o.metric), row.get(o.metric.removeprefix("kept_"))) for o in objectives]
        if any(v is None or not math.isfinite(v) for v in values):
            continue
        params = {key: row.get("method.name" if key == "method" else key) for key in space}
        params = {key: _typed(space[key], value) for key, value in params.items() if _inside(space[key], value)}
        if params:
            trials.append(optuna.trial.create_trial(
                params=params, distributions={key: distribution(space[key]) for key in params}, values=values,
                user_attrs={"warm_start": f"{source}:{row['trial_id']}"}))
    return WarmStart(source, trials, len(completed))


def _missing_to(value, other):
    return other if value is None or value != value else value


def _inside(d: dict, value) -> bool:
    """Whether a value read back from the table lies in a searched key's distribution."""
    if value is None or value != value:  # null, or NaN (pandas' null in a float column)
        return False
    if d["type"] == "choice":
        return value in list(d["values"])
    return isinstance(value, (int, float)) and d["low"] <= value <= d["high"]


def _typed(d: dict, value):
    """An int column with nulls reads back as floats: give an int key its int."""
    return int(value) if d["type"] == "int" else value
