"""The search's record: a Tune callback on the driver that keeps one trials-table row per trial
(rewritten on every event), and a line of progress per finished trial."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray.tune import Callback

from raygap import faults, layout, results, storage, study
from raygap.config import searched_values, trial_config
from raygap.errors import StorageError
from raygap.progress import eta
from raygap.ray_compat import trial_error_file
from raygap.runner import worker_error
from raygap.schema import as_dict
from raygap.searcher import TUNE_TRIAL_ID


LOST = ("lost: the search driver was killed before Tune saved this trial (or its save was cut short), so the resumed "
        "search could not continue it")


def settle_left_running(cfg, experiment: str) -> int:
    """Settle every row left `running` in an experiment whose Tune state is not restored (Recorder.settle);
    returns how many of its trials have ended."""
    recorder = Recorder(cfg, experiment)
    recorder.setup()
    recorder.settle([t for t, row in recorder.rows.items() if row.get("status") == "running"])
    return recorder.counts()["ended"]


class Recorder(Callback):
    """A Tune callback on the driver: one trials-table row per trial, rewritten on every event, and
    one line of progress per finished trial."""

    def __init__(self, cfg, experiment: str):
        self.experiment = experiment
        self.experiment_dir = layout.experiment(cfg.storage, experiment)
        self.epochs = cfg.train.epochs
        self.objective = cfg.tune.objectives[0]
        self.num_samples = cfg.tune.num_samples
        self.max_failures = cfg.tune.max_failures
        self.optuna_storage = cfg.tune.optuna_storage
        self.schema = results.trials_schema(cfg)
        self.rows: dict = {}

    def setup(self, **info):
        # Tune calls this at the start of every session, a resumed one too (which unpickles the Recorder
        # of the first session from tuner.pkl): the ETA's pace is this session's
        self.started = time.time()
        self.live_now, self.ended_now = set(), set()  # trials live (pending, running) and ended in this session
        previous = results.read_table(self.experiment_dir, "trials")
        for row in previous.to_dict("records"):
            self.rows[row["trial_id"]] = row

    def _row(self, trial) -> dict:
        row = self.rows.setdefault(trial.trial_id, {"trial_id": trial.trial_id, "started_at": time.time()})
        params = searched_values(trial.config)
        cfg = trial_config(trial.config["base"], params)
        row.update({"experiment": self.experiment, "params": json.dumps(params), "config": json.dumps(as_dict(cfg)),
                    **results.flatten(as_dict(cfg))})
        return row

    def _save(self, trial_id: str):
        results.write(layout.part(self.experiment_dir, "trials", trial_id), [self.rows[trial_id]],
                      self.schema)

    def _update_metrics(self, row: dict, history: list):
        if not history:
            return
        last = history[-1]
        number = last.get("kept_epoch")
        # null: a table of before kept epochs (the last then); found by number, since a PBT trial may skip one
        kept = next((r for r in history if r["epoch"] == number), last)
        row.update({"epochs": last["epoch"], "clean_acc": last["clean_acc"], "robust_acc": last["robust_acc"],
                    "loss": last.get("loss"), "kept_epoch": kept["epoch"], "kept_clean_acc": kept["clean_acc"],
                    "kept_robust_acc": kept["robust_acc"], "kept_clean_se": kept.get("clean_se"),
                    "kept_robust_se": kept.get("robust_se"),
                    **{name: sum(r[name] for r in history) for name in results.EpochRow.summed()}})

    def _history(self, trial_id: str) -> list:
        path = layout.part(self.experiment_dir, "epochs", trial_id)
        return results.read_part(path).to_dict("records") if storage.exists(path) else []

    def get_state(self):
        # Tune asks for this right after it saved the searcher's state, before it uploads both: the
        # study's copy in an object store is then never older than the searcher a resumed driver restores.
        faults.crash("tune_save")
        study.push(self.experiment_dir)
        return None  # nothing of the Recorder's own to save: it rebuilds from the trials table

    def on_step_end(self, iteration, trials, **info):
        self.live_now.update(t.trial_id for t in trials if t.status in ("PENDING", "RUNNING", "PAUSED"))

    def on_trial_start(self, trial, **info):
        row = self._row(trial)
        row["status"] = "running"
        self._save(trial.trial_id)

    def on_trial_complete(self, trial, **info):
        faults.crash("trial_ended")
        self.ended_now.add(trial.trial_id)
        row = self._row(trial)
        self._update_metrics(row, self._history(trial.trial_id))
        done = (row.get("epochs") or 0) >= self.epochs
        model_path = layout.model(layout.run(self.experiment_dir, trial.trial_id)) if done else None
        row.update({"status": "completed" if done else "stopped_early", "ended_at": time.time(),
                    "model_path": model_path})
        self._save(trial.trial_id)
        study.push(self.experiment_dir)
        self._progress(trial.trial_id)

    def on_trial_error(self, trial, **info):
        self.ended_now.add(trial.trial_id)
        row = self._row(trial)
        error = _trial_error(trial)
        self._update_metrics(row, self._history(trial.trial_id))
        row.update({"status": "failed", "ended_at": time.time(), "error": _error_line(error),
                    "retries": trial.num_failures - 1})
        self._save(trial.trial_id)
        study.push(self.experiment_dir)
        self._progress(trial.trial_id)
        if isinstance(error, StorageError):
            raise error  # every later trial would fail the same way: stop the search with this one line

    def on_trial_recover(self, trial, **info):
        row = self._row(trial)
        row["retries"] = trial.num_failures
        self._save(trial.trial_id)
        print(f"[search] trial {trial.trial_id} raised {_error_line(_trial_error(trial))}; retry "
              f"{trial.num_failures} of {self.max_failures}", flush=True)

    def on_experiment_end(self, trials, **info):
        # Tune answers the first Ctrl-C by saving its state and returning from fit() as from a finished
        # search: trials not yet created, pending ones, and running ones that it ends without
        # on_trial_complete. Their rows stay `running` (or absent) until the command runs again.
        cut = self.live_now - self.ended_now
        # Rows for trials whose end this driver did not see (it was killed in between, or the table
        # was lost), so that the table always holds one final row per finished trial.
        for trial in trials:
            if trial.trial_id in cut:
                continue
            status = self.rows.get(trial.trial_id, {}).get("status")
            if trial.status == "TERMINATED" and status not in ("completed", "stopped_early"):
                self.on_trial_complete(trial)
            elif trial.status == "ERROR" and status != "failed":
                self.on_trial_error(trial)
        # A trial started by a driver killed before Tune saved its state is unknown to the resumed search
        known = {trial.trial_id for trial in trials}
        self.settle([t for t, row in self.rows.items() if row.get("status") == "running" and t not in known])

    def settle(self, trial_ids: list) -> None:
        """End the rows of trials left `running` by a killed driver that Tune cannot resume. A trial had ended
        if the study was told so (Tune tells the searcher before the callbacks, so a kill in between leaves
        its row behind); without a study (PBT), if its every epoch and exported model were written. The
        others are lost."""
        told = self._told_ended() if trial_ids else None
        for trial_id in trial_ids:
            row = self.rows[trial_id]
            history = self._history(trial_id)
            self._update_metrics(row, history)
            model_path = layout.model(layout.run(self.experiment_dir, trial_id))
            trained = len(history) >= self.epochs and storage.exists(model_path)
            ended = trained if told is None else trial_id in told
            if ended:
                row.update({"status": "completed" if trained else "stopped_early", "ended_at": time.time(),
                            "model_path": model_path if trained else None})
            else:
                row.update({"status": "failed", "ended_at": time.time(), "error": LOST})
            self._save(trial_id)

    def _told_ended(self) -> set | None:
        """The Tune trials the study holds as ended with a result; None when the search has no study."""
        import optuna

        if not study.exists(self.optuna_storage, self.experiment_dir):
            return None
        optuna_study = optuna.load_study(study_name=self.experiment,
                                         storage=study.open_storage(self.optuna_storage, self.experiment_dir))
        ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return {t.user_attrs.get(TUNE_TRIAL_ID) for t in optuna_study.get_trials(deepcopy=False, states=ended)}

    def counts(self) -> dict:
        """Trials by status, the lost ones apart from the failed (others ran in their place), and how many
        ended: what counts towards tune.num_samples."""
        lost = sum(r.get("error") == LOST for r in self.rows.values())
        counts = {s: sum(r.get("status") == s for r in self.rows.values())
                  for s in ("running", "completed", "stopped_early", "failed")}
        counts["failed"] -= lost
        return {**counts, "lost": lost, "ended": len(self.rows) - counts["running"] - lost}

    def _progress(self, trial_id: str):
        row = self.rows[trial_id]
        counts = self.counts()
        lost, finished = counts["lost"], counts["ended"]
        scored = [r for r in self.rows.values() if r.get(self.objective.metric) is not None]
        pick = max if self.objective.mode == "max" else min
        best = pick(scored, key=lambda r: r[self.objective.metric]) if scored else None
        # The pace of this driver: a resumed search's earlier trials ended before it started
        left = (time.time() - self.started) / max(len(self.ended_now), 1) * (self.num_samples - finished)
        print(f"[search] trial {trial_id} {row['status']} after {row.get('epochs') or 0} epochs: "
              f"clean {row.get('kept_clean_acc') or 0:.3f} robust {row.get('kept_robust_acc') or 0:.3f} "
              f"(epoch {row.get('kept_epoch') or 0}) | "
              f"{finished}/{self.num_samples} done ({counts['completed']} completed, {counts['stopped_early']} "
              f"stopped early, {counts['failed']} failed{f', {lost} lost' if lost else ''}), {counts['running']} "
              "running | best "
              + (f"{self.objective.metric} {best[self.objective.metric]:.3f} ({best['trial_id']})" if best else "-")
              + f" | eta {eta(left)}", flush=True)


def _trial_error(trial):
    """The innermost exception of a failed trial, or None.

    Read from the driver's local copy of the pickled error: Tune syncs it to storage only later.
    """
    import cloudpickle

    path = trial_error_file(trial)
    if not (path and Path(path).is_file()):
        return None
    with open(path, "rb") as fh:
        error = cloudpickle.load(fh)
    while (getattr(error, "cause", None) or error.__cause__) is not None:  # RayTaskError keeps it in .cause
        error = getattr(error, "cause", None) or error.__cause__
    return worker_error(error)


def _error_line(error) -> str:
    if error is None:
        return "unknown error (see the trial's error.txt under the experiment folder)"
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:2000]
