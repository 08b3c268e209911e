"""MLflow beside the tables (raygap.trackers), on a real SQLite store; the search's own test reads a real
search's runs back (test_tune.py)."""

import pickle

from ray.tune.experiment import Trial

from raygap import config
from raygap.trackers import MLflowTracker


def test_a_tracker_that_fails_mid_search_says_so_and_the_search_goes_on(tmp_path, capsys):
    cfg = config.load([f"storage={tmp_path}", "tune.trackers=[mlflow]",
                       f"tune.mlflow_uri=sqlite:///{tmp_path}/mlflow.db"])
    tracker = MLflowTracker(cfg, "broken")
    trial = Trial("run_trial", stub=True, trial_id="t1")  # a real Tune trial record, never run
    tracker.on_trial_error(iteration=0, trials=[trial], trial=trial)
    assert tracker.client.get_run(tracker.runs["t1"]).info.status == "FAILED"

    (tmp_path / "mlflow.db").write_bytes(b"not a database any more" * 100)  # the store breaks mid-search
    tracker = MLflowTracker(cfg, "broken")
    tracker.on_trial_error(iteration=0, trials=[trial], trial=trial)  # returns: nothing raised into Tune
    line = capsys.readouterr().out.strip()
    assert line.startswith("[mlflow] on_trial_error failed (") and line.endswith("the search goes on")


def test_a_resumed_driver_does_not_log_an_epoch_again(tmp_path):
    cfg = config.load([f"storage={tmp_path}", "tune.trackers=[mlflow]",
                       f"tune.mlflow_uri=sqlite:///{tmp_path}/mlflow.db"])
    trial = Trial("run_trial", stub=True, trial_id="t1")
    epoch = lambda n, acc: {"epoch": n, "robust_acc": acc, "clean_acc": 0.9, "finished_at": 1.7e9 + n}  # noqa: E731
    first = MLflowTracker(cfg, "resumed")
    first.on_trial_result(iteration=1, trials=[trial], trial=trial, result=epoch(1, 0.1))
    saved = pickle.dumps(first)  # Tune saves its state here, after the first epoch
    for n, acc in ((2, 0.2), (3, 0.3)):
        first.on_trial_result(iteration=n, trials=[trial], trial=trial, result=epoch(n, acc))
    # the driver is killed; the resumed one restores the pickle and the trial its checkpoint of epoch 2
    resumed = pickle.loads(saved)
    for n, acc in ((3, 0.33), (4, 0.4)):
        resumed.on_trial_result(iteration=n, trials=[trial], trial=trial, result=epoch(n, acc))
    history = resumed.client.get_metric_history(resumed.run_id("t1"), "robust_acc")
    logged = [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]
    assert logged == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
