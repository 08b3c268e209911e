"""The search: `python -m raygap.tune [search=<name>] [overrides]`.

Ray Tune runs trials suggested by Optuna (seeded GP; NSGA-II for several objectives), stops poor ones
early with ASHA on the per-epoch robust validation accuracy, and trains each trial from the cached
natural model, as a Ray Train run of train.workers workers or, with train.workers=0, in the trial's own
process. Every epoch and every trial goes to Parquet as results arrive, the Optuna study to its
journal (raygap.study), and the best trials are evaluated with strong attacks on the test split at the
end. Running the same command again resumes an interrupted search, or prints the summary of a finished
one without training anything; one driver at a time runs an experiment (raygap.lock).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from raygap import (faults, layout, ray_compat, results, runner, searcher, stopping, storage, stream, study, trackers,
                    tune_state)
from raygap.analysis import how_to_open, leaderboard, pareto_front
from raygap.cli import entry_point
from raygap.config import searched_values, trial_config
from raygap.errors import StorageError, UserError
from raygap.lock import DriverLock
from raygap.loop import Job
from raygap.methods import from_scratch
from raygap.recorder import Recorder, settle_left_running
from raygap.robustness import evaluate_checkpoint
from raygap.schema import as_dict, name_digest
from raygap.searcher import suggest  # noqa: F401  (searches begun before 2026-11-24 pickled raygap.tune.suggest)

DEFAULT_SEARCH = "afd"


def experiment_name(cfg, search: str) -> str:
    """`name` when given, else derived from the search space and the whole config (so re-runs find it)."""
    return cfg.name or f"{Path(search).stem}-{cfg.data.name}-{cfg.model.name}-{name_digest(cfg)}"


def run_trial(config: dict) -> None:
    """The Tune function trainable. With train.workers >= 1 the trial is a Ray Train run whose epochs reach
    Tune via TuneReportCallback; with train.workers = 0 the trial's own process trains and reports."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    runner.free_memory()  # a reused process: the previous trial's memory back before this one allocates
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(config["base"], searched_values(config))
    experiment_dir = layout.experiment(cfg.storage, config["experiment"])
    start = None if from_scratch(cfg) else cfg.pretrained
    run_dir = layout.run(experiment_dir, trial_id)
    context = None  # a Ray Train run of train.workers workers
    if cfg.tune.scheduler.name == "pbt":  # a trial of a population: its state also goes to Tune, for clones
        context = runner.PopulationContext(run_dir, cfg.train.cpus_per_worker, cfg.train.gpus_per_worker, trial_id)
    elif cfg.train.workers == 0:  # this process trains: no Train controller and workers to start, seconds a trial
        context = runner.TuneTrialContext(run_dir, cfg.train.cpus_per_worker, cfg.train.gpus_per_worker)
    ray_compat.quiet_checkpoint_lines()
    started = time.time()
    job = Job(as_dict(cfg), cfg.method.name, "train", start, run_dir, label=trial_id, experiment_dir=experiment_dir,
              trial_id=trial_id)
    history = runner.execute(job, callbacks=[TuneReportCallback()], context=context)
    if not any(row["finished_at"] >= started for row in history):
        # The run had ended before a stopped driver saved the trial's end, so Tune ran it again and no
        # epoch was reported this time: report the last one, which Tune and the searcher expect.
        ray.tune.report({k: v for k, v in history[-1].items() if k != "node"})


def trial_process_resources(cfg) -> dict:
    """What one trial's own process asks Ray for: its driver's share, plus one worker's when it trains itself."""
    own = dict(cfg.tune.trial_resources)
    if cfg.train.workers == 0:
        for key, amount in {"CPU": cfg.train.cpus_per_worker, "GPU": cfg.train.gpus_per_worker}.items():
            own[key] = own.get(key, 0) + amount
    return own


def trial_resources(cfg, own: dict, streamed: bool):
    """What Tune reserves for one trial: its process's `own` resources, and for a streamed trial that trains
    in its own process a second bundle of its decoding CPUs, where its Ray Data tasks then run
    (runner.TuneTrialContext). Otherwise concurrent trials could take every CPU and leave their decoding
    tasks none: each trial would wait for ever on its first batch."""
    from ray.tune import PlacementGroupFactory

    if not streamed or cfg.train.workers:
        return own
    return PlacementGroupFactory([own, {"CPU": stream.decoding_cpus(cfg.data, cfg.train)}])


def _trial_name(trial) -> str:
    return trial.trial_id


def run(cfg, search: str = DEFAULT_SEARCH) -> dict:
    """Run (or resume, or summarise) the search of `cfg`; returns the summary. Bad input is refused
    before any Ray process starts."""
    if not cfg.tune.space:
        raise UserError(f"search space '{search}' has no tune.space; choose a search space with search=<name>")
    experiment = experiment_name(cfg, search)
    experiment_dir = layout.experiment(cfg.storage, experiment)
    storage.check_writable(cfg.storage)
    streamed = stream.check_tree(cfg.data)
    own = trial_process_resources(cfg)
    # A Train run's workers come on top of the trial's process; a trial that trains itself is one process on one node
    total, per_node = runner.resources(cfg.train) if cfg.train.workers else ({}, own)
    need = {k: own.get(k, 0) + total.get(k, 0) for k in own.keys() | total.keys()}
    if streamed:  # Ray Data's decoding tasks run beside the trial
        need["CPU"] = need.get("CPU", 0) + stream.decoding_cpus(cfg.data, cfg.train)
    runner.check_resources(need, per_node)
    for table in ("trials", "epochs"):
        results.check_readable(experiment_dir, table)
    trackers.check(cfg, experiment)
    with DriverLock(experiment_dir):  # refuses a second driver before it touches Tune's state or the study
        return _search(cfg, search, experiment, experiment_dir, trial_resources(cfg, own, streamed))


def _search(cfg, search: str, experiment: str, experiment_dir: str, resources) -> dict:
    import ray.tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

    population = cfg.tune.scheduler.name == "pbt"
    if not cfg.tune.optuna_storage:  # under the lease: no other driver is appending to the journal now
        study.fetch(experiment_dir)  # a resumed searcher reopens the journal from this machine's copy
        study.repair_journal(study.journal_path(experiment_dir))
    resuming = Tuner.can_restore(experiment_dir) and tune_state.restorable(experiment_dir)
    # A study begun by an earlier driver whose Tune state is lost (tune_state) was told the warm start and
    # the defaults point then; the trials it finished count towards tune.num_samples.
    earlier = not resuming and not population and study.exists(cfg.tune.optuna_storage, experiment_dir)
    warm = searcher.warm_start(cfg) if cfg.tune.warm_start and not resuming and not earlier else None
    # Without Tune's state no trial of the experiment runs now, nor will Tune go on with any
    remaining = cfg.tune.num_samples - (0 if resuming else settle_left_running(cfg, experiment))
    if remaining < cfg.tune.num_samples:
        print(f"[search] {cfg.tune.num_samples - remaining} of {cfg.tune.num_samples} trials are done; a new "
              f"Tune run over the same study runs the other {max(remaining, 0)}", flush=True)
    runner.connect()
    print(f"search '{search}': {cfg.tune.num_samples} trials of {cfg.method.name} on {cfg.data.name} with "
          f"{cfg.model.name}, {cfg.train.epochs} epochs each, in {experiment_dir}", flush=True)
    some_fine_tune = not from_scratch(cfg) or (cfg.init == "auto" and "method" in cfg.tune.space)
    if some_fine_tune and not cfg.pretrained:
        cfg.pretrained = runner.natural_model(cfg)["checkpoint"]
    trainable = ray.tune.with_resources(run_trial, resources)
    tuner = None  # none when the trials asked for have all ended: the finalists and the summary remain
    if resuming:
        print(f"resuming the search in {experiment_dir}", flush=True)
        tuner = Tuner.restore(experiment_dir, trainable=trainable, resume_errored=False)
    elif remaining > 0:
        space, search_alg = {}, None
        if population:  # Ray's PBT takes no searcher: Tune samples the first population from the space itself
            space = {key: stopping.tune_distribution(d) for key, d in as_dict(cfg.tune.space).items()}
            search_alg = searcher.first_population(cfg)
        else:
            search_alg = searcher.searcher(cfg, experiment, experiment_dir, warm, earlier)
        # Trials that train in their own process reuse it: the next trial skips a process start and the
        # imports (seconds on small CPUs); everything a trial trains with is built afresh in train_loop.
        tuner = Tuner(trainable, param_space={"base": as_dict(cfg), "experiment": experiment, **space},
                      tune_config=TuneConfig(search_alg=search_alg, scheduler=stopping.scheduler(cfg),
                                             reuse_actors=cfg.train.workers == 0,
                                             num_samples=remaining, trial_name_creator=_trial_name,
                                             trial_dirname_creator=_trial_name),
                      run_config=RunConfig(name=experiment, storage_path=cfg.storage, verbose=0,
                                           # PBT would pause a trial at its last epoch to perturb it: Tune's
                                           # stop, checked before the scheduler, ends it there instead
                                           stop={"training_iteration": cfg.train.epochs} if population else None,
                                           callbacks=[Recorder(cfg, experiment),
                                                      *trackers.callbacks(cfg, experiment)],
                                           # PBT hands a trial the last checkpoint of a better one: keep
                                           # a few, as Ray advises (ones deleted too early cannot be cloned)
                                           checkpoint_config=CheckpointConfig(num_to_keep=3 if population else None),
                                           failure_config=FailureConfig(max_failures=cfg.tune.max_failures)))
    if not population:
        print(f"Optuna study '{experiment}': {study.dashboard_command(cfg.tune.optuna_storage, experiment_dir)}",
              flush=True)
    faults.crash("before_trials")
    try:
        if tuner is not None:
            with runner.ctrl_c_stays_raygaps():
                tuner.fit()
    except Exception as err:  # Tune wraps what a callback raised: find the storage error, if that was it
        cause = err
        while cause is not None and not isinstance(cause, StorageError):
            cause = cause.__cause__ or cause.__context__
        raise (cause or err) from None
    # Tune answers the first Ctrl-C by returning from fit() as from a finished search; the trials table
    # (which the Recorder has just completed) tells the two apart.
    frame = results.read_table(experiment_dir, "trials")
    if len(frame) < cfg.tune.num_samples or (frame.status == "running").any():
        raise KeyboardInterrupt
    if not population:
        _close_orphans(cfg, experiment, experiment_dir)
        study.push(experiment_dir)
    finalists(cfg, experiment_dir)
    trackers.log_finalists(cfg, experiment, results.read_table(experiment_dir, "trials"))
    ray.shutdown()  # flushes the workers' last log lines now, before the summary and the last line
    return summary(cfg, experiment_dir)


def _close_orphans(cfg, experiment: str, experiment_dir: str) -> None:
    """Mark as failed the Optuna trials that a killed driver had asked for but never ran.

    The searcher's state is saved now and then, the study at once: after a resume the study can
    hold a trial that the restored searcher never heard of. Once the search is over, nothing is running.
    """
    import optuna

    optuna_study = optuna.load_study(study_name=experiment, storage=study.open_storage(cfg.tune.optuna_storage,
                                                                                      experiment_dir))
    for trial in optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        optuna_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def finalists(cfg, experiment_dir: str) -> None:
    """Evaluate the best `final_eval.top_k` completed trials on the test split (once): their test columns in
    the trials table, which example each got right under each attack in the examples table."""
    frame = results.read_table(experiment_dir, "trials")
    if frame.empty or not cfg.final_eval.top_k:
        return
    columns = results.test_columns(cfg)
    for row in results.finalist_candidates(frame, cfg.tune.objectives[0], cfg.final_eval.top_k).to_dict("records"):
        examples = layout.part(experiment_dir, "examples", row["trial_id"])
        if row.get("finalist") and all(row.get(c) is not None and row[c] == row[c] for c in columns) \
                and storage.exists(examples):
            continue
        print(f"[search] evaluating finalist {row['trial_id']} on the test split: {', '.join(cfg.final_eval.attacks)}",
              flush=True)
        run_dir = layout.run(experiment_dir, row["trial_id"])  # not row["model_path"]: the storage may have moved
        result = final_evaluation(cfg, json.loads(row["config"]), layout.model(run_dir), layout.final_eval(run_dir))
        results.write_examples(experiment_dir, row["trial_id"], result, cfg.final_eval.attacks)
        faults.crash("final_eval")
        row.update({c: result[c[len("test_"):]] for c in columns}, finalist=True, model_path=layout.model(run_dir))
        results.write(layout.part(experiment_dir, "trials", row["trial_id"]), [row],
                      results.trials_schema(cfg))


def final_evaluation(cfg, run_config: dict, model_path: str, out: str) -> dict:
    """An exported model on the first `final_eval.n` test examples under `final_eval.attacks`, as a Ray task
    with a trial's resources (Ray connected); prints its table, returns robustness.evaluate_checkpoint's result."""
    import ray

    overrides = {"checkpoint": model_path, "eval": {**as_dict(cfg.eval), "attacks": list(cfg.final_eval.attacks),
                 "n": cfg.final_eval.n, "format": "raygap", "out": out}}
    task = ray.remote(num_cpus=cfg.train.cpus_per_worker, num_gpus=cfg.train.gpus_per_worker)(_evaluate)
    result, table = ray.get(task.remote(OmegaConf.merge(OmegaConf.create(run_config), overrides)))
    print(table, end="", flush=True)
    return result


def _evaluate(cfg):
    """robustness.evaluate_checkpoint with its table returned rather than printed: Ray forwards a task's output
    late, and out of order with the driver's. It takes every core of its node: the search is over and finalists
    are evaluated one at a time, but Ray gives a task of under 2 CPUs one thread (AutoAttack on the
    laptop default's finalist: 134 s on one, 75 s on two cores)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    with contextlib.redirect_stdout(io.StringIO()) as table:
        result = evaluate_checkpoint(cfg)
    return result, table.getvalue()


def summary(cfg, experiment_dir: str) -> dict:
    """Print the leaderboard, the Pareto front and where the tables are; return them."""
    import pandas as pd

    frame = results.read_table(experiment_dir, "trials")
    if frame.empty:
        raise UserError(f"no trial finished in {experiment_dir}; see the errors above")
    objective = cfg.tune.objectives[0]
    board = leaderboard(frame, objective.metric, objective.mode)
    front = pareto_front(frame)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print("\nleaderboard (validation accuracy at the epoch each trial kept, ± its standard error; test_* on the "
              "test split):")
        print(board.head(10).to_string(index=False))
        print("\nPareto front of clean vs robust validation accuracy:")
        print(front[board.columns].to_string(index=False))
    counts = frame.status.value_counts().to_dict()
    print(f"\ntrials: {len(frame)} ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
          f"cost {frame.cpu_seconds.sum():.0f} CPU-seconds, {frame.gpu_seconds.sum():.0f} GPU-seconds")
    with_study = study.exists(cfg.tune.optuna_storage, experiment_dir)
    print(f"tables: {experiment_dir}/epochs and {experiment_dir}/trials (Parquet); "
          + ("the study, then the tables:" if with_study else "to open them:"))
    print("\n".join(f"  {command}" for command in how_to_open(experiment_dir, cfg.tune.optuna_storage, with_study)))
    return {"experiment_dir": experiment_dir, "leaderboard": board, "front": front}


def pop_search(argv: list, default: str = DEFAULT_SEARCH) -> tuple[str, list]:
    """The search space named by `search=` among the arguments (else `default`), and the other arguments."""
    search = default
    rest = []
    for arg in argv:
        if arg.startswith("search="):
            search = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return search, rest


def main():
    search, sys.argv[1:] = pop_search(sys.argv[1:])
    entry_point(lambda cfg: run(cfg, search), last_line=lambda result: result["experiment_dir"], doc=__doc__,
                config_name=search)


if __name__ == "__main__":
    main()
