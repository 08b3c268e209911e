"""Experiment trackers beside the Parquet tables (which stay the source of truth): `tune.trackers=[mlflow]`.

Each trial becomes an MLflow run in the MLflow experiment named like raygap's: its whole config as
params, its epochs as metric histories (step = epoch), its status, the exported model as an artifact,
and, for finalists, the test-split columns. Logged from the driver, as a Tune callback: Ray Train v2
rejects Tune's logger callbacks inside Train runs (ray #49454), and the driver sees every trial, so one
place logs them all. A resumed search finds its runs again by the tag raygap.trial_id. A trial resumed
from its checkpoint trains again the epochs after it and reports them again: they are logged again, so
MLflow holds two points at such a step, and the later one is the epochs table's (which is rewritten).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

from ray.tune import Callback

from raygap import layout, results, storage
from raygap.config import searched_values, trial_config
from raygap.errors import UserError
from raygap.schema import as_dict

TRIAL_TAG = "raygap.trial_id"


def _never_stops_the_search(hook):
    """A tracker that fails mid-search (its server gone) prints one line and the search goes on: the
    Parquet tables are the search's record, the tracker a view of it."""

    @functools.wraps(hook)
    def guarded(*args, **kwargs):
        try:
            hook(*args, **kwargs)
        except Exception as err:  # MLflow's, its stores' and the network's errors alike
            print(f"[mlflow] {hook.__name__} failed ({' '.join(str(err).split())[:200]}); the search goes on",
                  flush=True)

    return guarded


def check(cfg, experiment: str) -> None:
    """Refuse, before any trial starts, a tracker that cannot be written to (its MLflow experiment is made here)."""
    for tracker in callbacks(cfg, experiment):
        tracker.client


def callbacks(cfg, experiment: str) -> list:
    return [MLflowTracker(cfg, experiment)] if "mlflow" in cfg.tune.trackers else []


class MLflowTracker(Callback):
    """A Tune callback on the driver: one MLflow run per trial. Tune pickles its callbacks with the
    search's state, so the connection is made on first use and left out of the pickle."""

    def __init__(self, cfg, experiment: str):
        self.uri = cfg.tune.mlflow_uri or None  # None: MLflow's own (MLFLOW_TRACKING_URI, else ./mlflow.db)
        self.experiment = experiment
        self.experiment_dir = layout.experiment(cfg.storage, experiment)
        self.runs: dict = {}  # trial_id -> MLflow run id
        self._client = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            try:
                import mlflow
                from mlflow.tracking import MlflowClient
            except ImportError:
                raise UserError("tune.trackers=[mlflow] needs MLflow: pip install -e \".[mlflow]\"") from None
            uri = self.uri or mlflow.get_tracking_uri()
            try:
                client = MlflowClient(tracking_uri=uri)
                found = client.get_experiment_by_name(self.experiment)
                self.experiment_id = found.experiment_id if found else client.create_experiment(
                    self.experiment, artifact_location=_artifact_location(uri))
            except Exception as err:  # MLflow raises its own errors and its stores' (SQLAlchemy, HTTP)
                reason = " ".join(str(err).split())[:300]
                raise UserError(f"MLflow tracking URI {uri} cannot be written ({reason}); set "
                                "tune.mlflow_uri or MLFLOW_TRACKING_URI to a writable store, for example "
                                "sqlite:///mlflow.db") from None
            self._client = client
        return self._client

    def run_id(self, trial_id: str) -> str:
        """The trial's MLflow run: found by its tag (a resumed search), else created."""
        if trial_id not in self.runs:
            found = self.client.search_runs([self.experiment_id], f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1)
            self.runs[trial_id] = found[0].info.run_id if found else self.client.create_run(
                self.experiment_id, run_name=trial_id, tags={TRIAL_TAG: trial_id}).info.run_id
        return self.runs[trial_id]

    @_never_stops_the_search
    def on_trial_start(self, iteration, trials, trial, **info):
        from mlflow.entities import Param

        run_id = self.run_id(trial.trial_id)
        if self.client.get_run(run_id).data.params:
            return  # logged by the driver that started it: params cannot change
        searched = searched_values(trial.config)
        config = results.flatten(as_dict(trial_config(trial.config["base"], searched)))
        params = [Param(k, str(v)[:6000]) for k, v in sorted(config.items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=params[start:start + 100])
        self.client.set_tag(run_id, "raygap.searched", json.dumps(searched))

    @_never_stops_the_search
    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        step = int(result["epoch"])
        logged = [k for k in results.EpochRow.metrics()
                  if k != "finished_at" and isinstance(result.get(k), (int, float))]
        metrics = [Metric(k, float(result[k]), int(result["finished_at"] * 1000), step) for k in logged]
        self.client.log_batch(self.run_id(trial.trial_id), metrics=metrics)

    @_never_stops_the_search
    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial.trial_id)
        model = layout.model(layout.run(self.experiment_dir, trial.trial_id))
        if storage.exists(model):  # a trial stopped early exported none
            with tempfile.TemporaryDirectory() as folder:
                local = os.path.join(folder, "model.pt")
                with open(local, "wb") as fh:
                    fh.write(storage.read_bytes(model))
                self.client.log_artifact(run_id, local)
        self.client.set_terminated(run_id, "FINISHED")

    @_never_stops_the_search
    def on_trial_error(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.run_id(trial.trial_id), "FAILED")


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside it, in mlartifacts/ (MLflow's default, ./mlruns, lies
    under whatever folder the driver was started in); a tracking server keeps its own."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve().parent.joinpath("mlartifacts").as_uri()
    return None


@_never_stops_the_search
def log_finalists(cfg, experiment: str, trials) -> None:
    """The finalists' test-split columns, as metrics of their MLflow runs."""
    if "mlflow" not in cfg.tune.trackers:
        return
    from mlflow.entities import Metric

    (tracker,) = callbacks(cfg, experiment)
    for row in trials[trials.finalist == True].to_dict("records"):  # noqa: E712 (a nullable column)
        metrics = [Metric(c, float(row[c]), int(row.get("ended_at", 0) * 1000), 0) for c in results.test_columns(cfg)
                   if row.get(c) == row.get(c) and row.get(c) is not None]
        tracker.client.log_batch(tracker.run_id(row["trial_id"]), metrics=metrics)
