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


def test_a_resumed_trials_epochs_trained_again_are_what_mlflow_shows_last(tmp_path):
    cfg = config.load([f"storage={tmp_path}", "tune.trackers=[mlflow]",
                       f"tune.mlflow_uri=sqlite:///{tmp_path}/mlflow.db"])
    trial = Trial("run_trial", stub=True, trial_id="t1")
    report = lambda tracker, n, acc, at: tracker.on_trial_result(  # noqa: E731
        iteration=n, trials=[trial], trial=trial,
        result={"epoch": n, "robust_acc": acc, "clean_acc": 0.9, "finished_at": 1.7e9 + at})
    first = MLflowTracker(cfg, "resumed")
    report(first, 1, 0.1, at=1)
    saved = pickle.dumps(first)  # Tune saves its state here, after the first epoch
    report(first, 2, 0.2, at=2)
    report(first, 3, 0.3, at=3)
    # the driver is killed; the resumed one restores the pickle, and the trial its checkpoint of epoch 2:
    # epoch 3 is trained again (the epochs table now holds 0.33 for it), then epoch 4
    resumed = pickle.loads(saved)
    report(resumed, 3, 0.33, at=10)
    report(resumed, 4, 0.4, at=11)
    run_id = resumed.run_id("t1")
    assert run_id == first.runs["t1"]  # one run per trial, found again
    latest = {}
    for point in sorted(resumed.client.get_metric_history(run_id, "robust_acc"), key=lambda m: m.timestamp):
        latest[point.step] = point.value
    assert latest == {1: 0.1, 2: 0.2, 3: 0.33, 4: 0.4}
    assert resumed.client.get_run(run_id).data.metrics["robust_acc"] == 0.4
