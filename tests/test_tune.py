"""The search on a real local Ray cluster: Parquet tables, statuses, resume after SIGKILL, Pareto fronts."""

import json
import os
import signal

import optuna
import pandas as pd
import pytest

from raygap import results
from raygap.study import open_storage
from raygap.analysis import pareto_front

from helpers import SMALL, run_main, start_search_until_a_trial_completes, tune_cli

pytestmark = pytest.mark.slow  # searches on a local Ray cluster


def check_tables(experiment_dir, train_epochs=2):
    trials = results.read_table(experiment_dir, "trials")
    epochs = results.read_table(experiment_dir, "epochs")
    assert trials.trial_id.is_unique
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    for row in trials.itertuples():
        mine = epochs[epochs.trial_id == row.trial_id]
        assert sorted(mine.epoch) == list(range(1, len(mine) + 1))
        assert len(mine) == (row.epochs if row.epochs == row.epochs else 0)  # NaN: no epoch reported
        if row.status == "completed":
            assert row.epochs == train_epochs and os.path.exists(row.model_path)
        elif row.status == "stopped_early":
            assert 1 <= row.epochs < train_epochs
        else:
            assert row.status == "failed" and row.error
    return trials, epochs


def test_small_search_writes_one_row_per_epoch_and_per_trial(small_search, natural_digits):
    experiment_dir, proc, args = small_search
    tmp_path = experiment_dir.parent
    trials, epochs = check_tables(experiment_dir)
    assert len(trials) == 4
    lrs = trials["train.lr"]
    assert set(trials[lrs > 1].status) == {"failed"}  # at least one trial drew the diverging rate
    assert all("diverged" in e for e in trials[lrs > 1].error)
    assert set(trials[lrs < 1].status) <= {"completed", "stopped_early"}
    assert (trials.status == "completed").any()
    # every searched hyperparameter is a column of both tables, with the value the trial used
    merged = epochs.merge(trials[["trial_id", "attack.eps"]], on="trial_id", suffixes=("", "_trial"))
    assert (merged["attack.eps"] == merged["attack.eps_trial"]).all()
    assert trials["attack.eps"].between(0.05, 0.2).all()
    # the finalist was evaluated on the test split and the Optuna study is readable without Ray
    finalist = trials[trials.finalist == True]  # noqa: E712
    assert len(finalist) == 1 and finalist.test_pgd20_acc.iloc[0] < finalist.test_clean_acc.iloc[0]
    # PGD-20 attacks only what the model classifies correctly: the worst case over clean and PGD-20 is PGD-20's
    assert finalist.test_robust_acc.iloc[0] == finalist.test_pgd20_acc.iloc[0]
    # which test image the finalist gets right under each attack, for paired comparisons
    examples = results.read_table(experiment_dir, "examples")
    assert len(examples) == 100 and set(examples.trial_id) == set(finalist.trial_id)
    assert examples.correct_pgd20.mean() == pytest.approx(finalist.test_pgd20_acc.iloc[0])
    # each trial kept its best epoch: never below its last one, with the figure's standard error beside it
    scored = trials[trials.status != "failed"]
    assert (scored.kept_robust_acc >= scored.robust_acc).all() and (scored.kept_epoch <= scored.epochs).all()
    assert (scored.kept_robust_se > 0).all()
    study = optuna.load_study(study_name="small", storage=open_storage("", str(tmp_path / "small")))
    assert len(study.trials) == 4
    assert "leaderboard" in proc.stdout and "Pareto front" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "small")

    again = tune_cli(tmp_path, natural_digits[1], *args)
    assert again.returncode == 0 and "] epoch " not in again.stdout  # a finished search trains nothing
    assert results.read_table(tmp_path / "small", "trials").equals(trials)


def test_sigkill_of_the_driver_then_the_same_command_finishes_the_search(tmp_path, natural_digits):
    """On the multi-objective search (NSGA-II over clean and robust accuracy): its front is checked too."""
    _, path = natural_digits
    args = ["search=afd_pareto", "name=killed", "tune.num_samples=3", "tune.scheduler.name=fifo"]
    first, trials = start_search_until_a_trial_completes(tmp_path, path, args, tmp_path / "killed")
    done_before = trials[trials.status == "completed"].set_index("trial_id")
    # the same command in a second terminal is refused with one line naming the running driver (stopped
    # meanwhile, SIGSTOP, so that a loaded machine cannot let it finish the search before the check)
    os.killpg(first.pid, signal.SIGSTOP)
    beside = tune_cli(tmp_path, path, *args)
    assert beside.returncode == 2 and "] epoch " not in beside.stdout
    assert beside.stderr.count("\n") == 1 and f"another driver (pid {first.pid} on" in beside.stderr
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # and, as a kill in the middle of an append leaves it, the study's last record cut short
    journal = tmp_path / "killed" / "optuna.journal"
    with open(journal, "ab") as fh:
        fh.write(journal.read_bytes().splitlines(keepends=True)[-1][:30])

    second = tune_cli(tmp_path, path, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout and f"[study] the last record of {journal} was cut short" in second.stdout
    trials, epochs = check_tables(tmp_path / "killed")
    assert (trials.status == "completed").sum() == 3
    # a trial the killed driver started before Tune saved its state is recorded as lost, not left running
    assert all(trials[trials.status != "completed"].error.str.startswith("lost:"))
    # Trials finished before the kill were not trained again: none of their epochs ran after it. (Tune may
    # restart one whose end it had not yet saved; its Train run then finds its last epoch done.)
    for trial_id in done_before.index:
        mine = epochs[epochs.trial_id == trial_id]
        assert (mine.finished_at <= done_before.loc[trial_id, "ended_at"]).all()
    study = optuna.load_study(study_name="killed", storage=open_storage("", str(tmp_path / "killed")))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert optuna.trial.TrialState.RUNNING not in states  # one asked before the kill may be marked failed
    assert len(study.directions) == 2

    front = pareto_front(trials)
    assert len(front) >= 1
    clean, robust = trials.kept_clean_acc, trials.kept_robust_acc  # the figures of the epochs the trials exported
    for row in front.itertuples():
        better = trials[(clean >= row.kept_clean_acc) & (robust >= row.kept_robust_acc)
                        & ((clean > row.kept_clean_acc) | (robust > row.kept_robust_acc))]
        assert better.empty
    for row in trials[~trials.trial_id.isin(front.trial_id)].dropna(subset=["kept_clean_acc"]).itertuples():
        assert ((front.kept_clean_acc >= row.kept_clean_acc) & (front.kept_robust_acc >= row.kept_robust_acc)).any()
    assert "Pareto front" in second.stdout


def test_pareto_front_of_a_hand_made_table():
    table = pd.DataFrame({"trial_id": list("abcdef"),
                          "kept_clean_acc": [0.9, 0.8, 0.7, 0.85, 0.6, 0.9],
                          "kept_robust_acc": [0.5, 0.6, 0.7, 0.55, 0.65, 0.4]})
    # f is dominated by a, e by c; d lies between a and b and is on the front
    assert list(pareto_front(table).trial_id) == ["a", "d", "b", "c"]


def test_a_searched_method_gets_its_defaults_for_the_data(tmp_path):
    from raygap import config, schema
    from raygap.config import trial_config

    base = schema.as_dict(config.load([f"storage={tmp_path}"], "baselines"))
    assert trial_config(base, {"method": "trades"}).method.beta == 1.0  # data_method/digits_trades.yaml
    assert trial_config(base, {"method": "trades", "method.beta": 3.0}).method.beta == 3.0
    assert trial_config(base, {"method": "mart"}).method.beta == 6.0
    cifar = schema.as_dict(config.load([f"storage={tmp_path}", "data=cifar10", "data.download=true"], "baselines"))
    assert trial_config(cifar, {"method": "trades"}).method.beta == 6.0


def test_a_warm_started_pareto_search_is_told_the_earlier_trials_and_trains_only_its_own(
        tmp_path, small_search, natural_digits):
    earlier_dir = small_search[0]
    completed = int((results.read_table(earlier_dir, "trials").status == "completed").sum())
    assert completed >= 1
    proc = tune_cli(tmp_path, natural_digits[1], "search=afd_pareto", "name=warm", f"tune.warm_start={earlier_dir}",
                    "tune.num_samples=3", "final_eval.top_k=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warm start: {completed} of the {completed} completed trials of {earlier_dir}" in proc.stdout
    trials, _ = check_tables(tmp_path / "warm")  # afd_pareto stops early with Pareto-aware ASHA
    assert len(trials) == 3 and len(os.listdir(tmp_path / "warm" / "runs")) == 3  # the earlier ones not retrained
    study = optuna.load_study(study_name="warm", storage=open_storage("", str(tmp_path / "warm")))
    told = [t for t in study.trials if "warm_start" in t.user_attrs]
    assert len(told) == completed and len(study.trials) == completed + 3
    assert all(len(t.values) == 2 for t in told)  # robust and clean accuracy, the two objectives


GRID = """
defaults: [raygap, {budget: laptop}, {override method: afd}, _self_]
tune:
  algorithm: grid
  num_samples: 4
  scheduler: {name: fifo}
  space:
    method.disentangler_size: {type: choice, values: [2, 200]}
    method.align_weight: {type: choice, values: [2.0, 25.0]}
    attack.eps: {type: choice, values: [0.1]}
"""


def test_a_recorded_grid_replays_deterministically_and_an_oracle_reaches_its_best(tmp_path, natural_digits):
    from test_protocols import benchmark

    space = tmp_path / "grid.yaml"
    space.write_text(GRID)
    proc = tune_cli(tmp_path, natural_digits[1], f"search={space}", "name=grid", "final_eval.top_k=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials, _ = check_tables(tmp_path / "grid")
    assert len(trials) == 4 and set(trials.status) == {"completed"}
    assert len(set(trials.params)) == 4  # every combination, once

    replay = benchmark("search_replay")
    grid = replay.load_grid(str(tmp_path / "grid"))
    assert len(grid.curves) == 4 and grid.epochs == 2
    budget = 3 * sum(s for _, _, s in next(iter(grid.curves.values())))
    best_key = max(grid.curves, key=lambda k: grid.curves[k][-1][0])
    worst_key = min(grid.curves, key=lambda k: grid.curves[k][-1][0])
    for strategy in replay.STRATEGIES:
        for ordered in (False, True):  # the numeric choices as categories, or as ordered steps
            first = replay.replay(grid, strategy, seed=1, budget=budget, grace_period=1, ordered=ordered)
            assert first == replay.replay(grid, strategy, seed=1, budget=budget, grace_period=1, ordered=ordered)
            assert max(best for _, best, _ in first) <= grid.best()
        # every search tries the given configuration first, as raygap's try their defaults: the best one, then the
        # worst (a search that ignored it would draw the same first configuration both times); no rung at 2 epochs
        for key in (best_key, worst_key):
            given = replay.first_configuration(grid, [f"{k}={v}" for k, v in zip(grid.space, key)])
            tried = replay.replay(grid, strategy, seed=1, budget=budget, ordered=True, first=given)
            assert tried[0][1] == grid.curves[key][-1][0]
    oracle = replay.replay(grid, replay.STRATEGIES[0], seed=0, budget=budget,
                           choose=lambda history: dict(zip(grid.space, best_key)))
    assert oracle[0][1] == grid.best()
    # given the recorded search's own suggestions, in its order, the replay is that search: its spending and
    # its best-so-far after each trial are the tables'
    recorded = trials.sort_values("started_at")
    suggestions = [json.loads(p) for p in recorded.params]
    total = float(recorded.cpu_seconds.sum())
    # the budget a hair under the total: the tables and the replay sum the same epochs' seconds in different
    # orders, and a last bit of rounding below the total would ask for a fifth trial
    own = replay.replay(grid, replay.STRATEGIES[0], seed=0, budget=total * (1 - 1e-9),
                        choose=lambda history: suggestions[len(history)])
    final = recorded.robust_acc.tolist()  # each trial's last epoch
    assert [best for _, best, _ in own] == [max(final[:i + 1]) for i in range(4)]
    assert [spent for spent, _, _ in own] == pytest.approx(recorded.cpu_seconds.cumsum().tolist())
    outside = lambda history: {"method.disentangler_size": 8, "method.align_weight": 2.0, "attack.eps": 0.1}  # noqa: E731
    with pytest.raises(replay.GridError, match="the grid has no configuration"):
        replay.replay(grid, replay.STRATEGIES[0], seed=0, budget=budget, choose=outside)
    # the same grid at a cheaper fidelity (PGD-1 training): a multi-fidelity search pays a configuration's cheap
    # run, and its full run only when promoted; the first configuration always is
    (tmp_path / "cheap.yaml").write_text(GRID + "attack: {steps: 1}\n")
    proc = tune_cli(tmp_path, natural_digits[1], f"search={tmp_path / 'cheap.yaml'}", "name=cheap",
                    "final_eval.top_k=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cheap = replay.load_grid(str(tmp_path / "cheap"))
    first_key = next(iter(grid.curves))
    cost = lambda curve: sum(s for _, _, s in curve)  # noqa: E731
    assert cost(cheap.curves[first_key]) < cost(grid.curves[first_key])  # PGD-1 is the cheaper fidelity
    for strategy in replay.CHEAP_FIRST:
        run = replay.replay(grid, strategy, seed=1, budget=budget, cheap=cheap)
        assert run == replay.replay(grid, strategy, seed=1, budget=budget, cheap=cheap)
        assert max(best for _, best, _ in run) <= grid.best()
    spent, best, done = replay.replay(grid, replay.CHEAP_FIRST[0], seed=0, budget=1e-9, cheap=cheap,
                                      choose=lambda history: dict(zip(grid.space, first_key)))[0]
    assert spent == pytest.approx(cost(cheap.curves[first_key]) + cost(grid.curves[first_key]))
    assert best == grid.curves[first_key][-1][0] and done == [grid.curves[first_key][-1][:2]]
    rows = replay.main([str(tmp_path / "grid"), "--replays", "3", "--budget-trials", "2", "--grace-period", "1",
                        "--cheap", str(tmp_path / "cheap")])
    assert [name for name, _, _ in rows] == [s.name for s in replay.STRATEGIES + replay.CHEAP_FIRST]
    with pytest.raises(SystemExit) as refused:
        replay.main([str(tmp_path / "nowhere")])
    assert refused.value.code == 2
    # --only replays the named strategies beside random, the yardstick; a name it does not know is refused
    only = replay.main([str(tmp_path / "grid"), "--replays", "2", "--budget-trials", "2", "--startup", "3",
                        "--only", "GP, start-up sized + ASHA"])
    assert [name for name, _, _ in only] == ["random", "GP, start-up sized + ASHA"]
    with pytest.raises(SystemExit) as refused:
        replay.main([str(tmp_path / "grid"), "--only", "GP"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit) as refused:  # a cheap-first strategy without the cheap grid it needs
        replay.main([str(tmp_path / "grid"), "--only", replay.CHEAP_FIRST[-1].name])
    assert refused.value.code == 2


def test_each_trial_of_the_search_is_an_mlflow_run_read_back_with_mlflow_s_client(small_search):
    from mlflow.tracking import MlflowClient

    experiment_dir, _, args = small_search
    trials, epochs = check_tables(experiment_dir)
    client = MlflowClient(tracking_uri=f"sqlite:///{experiment_dir.parent.parent}/mlflow.db")
    experiment = client.get_experiment_by_name("small")
    runs = {r.data.tags["raygap.trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(trials.trial_id)  # one run per trial, none twice (the re-run added none)
    for row in trials.to_dict("records"):
        run = runs[row["trial_id"]]
        assert run.data.params["train.lr"] == str(row["train.lr"])
        assert run.data.params["method.align_weight"] == str(row["method.align_weight"])
        curve = client.get_metric_history(run.info.run_id, "robust_acc")
        mine = epochs[epochs.trial_id == row["trial_id"]].sort_values("epoch")
        by_step = [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)]
        assert by_step == list(zip(mine.epoch, mine.robust_acc))
        assert run.info.status == ("FAILED" if row["status"] == "failed" else "FINISHED")
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert artifacts == (["model.pt"] if row["status"] == "completed" else [])
    assert list((experiment_dir.parent.parent / "mlartifacts").rglob("model.pt"))  # beside the store, not in cwd
    (finalist,) = trials[trials.finalist == True].to_dict("records")  # noqa: E712
    logged = runs[finalist["trial_id"]].data.metrics
    assert logged["test_robust_acc"] == finalist["test_robust_acc"] and "test_pgd20_acc" in logged


def test_an_mlflow_store_that_cannot_be_written_is_refused_before_ray(tmp_path):
    from helpers import run_cli

    proc = run_cli("tune", f"storage={tmp_path}", "tune.trackers=[mlflow]", "tune.mlflow_uri=sqlite:////proc/no/mlflow.db")
    assert proc.returncode == 2 and proc.stdout == ""
    line = proc.stderr.strip()
    assert "\n" not in line
    assert line.startswith("raygap: error: MLflow tracking URI sqlite:////proc/no/mlflow.db cannot be written")
    assert "MLFLOW_TRACKING_URI" in line and not list(tmp_path.iterdir())  # nothing written


def test_ctrl_c_stops_what_follows_a_search_or_a_ray_train_run_in_the_same_process(tmp_path, natural_digits):
    """Ray Tune and Ray Train leave their Ctrl-C handlers installed once they return: a comparison's next arm,
    trained or attacked in the same process, would then only log the user's first Ctrl-C (Tune's), or end
    with exit 0 as if done (Train's)."""
    import ray

    before = signal.getsignal(signal.SIGINT)
    proc = run_main("tune", f"storage={tmp_path}", f"pretrained={natural_digits[1]}", *SMALL, "tune.num_samples=1",
                    "train.epochs=1", "final_eval.attacks=[clean]")
    assert proc.returncode in (0, None), proc.stderr[-3000:]
    assert len(results.read_table(proc.stdout.strip().splitlines()[-1], "trials")) == 1  # its last line: the experiment
    assert signal.getsignal(signal.SIGINT) is before
    try:
        proc = run_main("train", f"storage={tmp_path}", f"pretrained={natural_digits[1]}", "method=vaft",
                        "train.epochs=1", "train.workers=1", "eval.val_n=100")
        assert proc.returncode in (0, None) and proc.stdout.strip().endswith("model.pt"), proc.stderr[-3000:]
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        ray.shutdown()
