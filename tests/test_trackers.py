"""MLflow beside the tables (raygap.trackers), on a real SQLite store; the search's own test reads a real
search's runs back (test_tune.py)."""

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
