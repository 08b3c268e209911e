"""Where everything lies under `storage`: the one place that spells a path inside it.

    ${storage}/
      <experiment>/                  a search (raygap.tune), or a comparison and its arms (raygap.compare)
        trials/ epochs/ examples/    Parquet tables, one part file per trial: <trial_id>.parquet
        arms/ differences/           a comparison's tables
        runs/<trial_id>/             a trial's run folder (below)
        optuna.journal               the Optuna study (study.py)
        driver.lock                  the running driver's lease (lock.py)
        torn-tune-state/             Tune's files of a state a crash cut short, moved aside (tune_state.py)
        report/                      raygap.report's page and figures
      pretrained/<key>/              the cached natural model: a run folder
      <run name>/                    a raygap.train run: a run folder

    a run folder: model.pt (the exported classifier), state.pt (the training state of a run outside Ray
    Train), config.yaml, diverged.txt (why a run stopped for good), final_eval.json (its test figures)

Every name is a plain function of its parents, so storage may be a local folder or a bucket URI.
"""

from __future__ import annotations

from raygap import storage

JOURNAL = "optuna.journal"
LOCK = "driver.lock"
TORN_TUNE_STATE = "torn-tune-state"


def experiment(root: str, name: str) -> str:
    return storage.join(root, name)


def table(experiment_dir: str, name: str) -> str:
    """The folder of a table's part files."""
    return storage.join(experiment_dir, name)


def part(experiment_dir: str, name: str, key: str) -> str:
    """One part file of a table: a trial's (key: its id), or a comparison's whole table."""
    return storage.join(experiment_dir, name, f"{key}.parquet")


def run(experiment_dir: str, trial_id: str) -> str:
    """A trial's run folder."""
    return storage.join(experiment_dir, "runs", trial_id)


def train_run(root: str, name: str) -> str:
    """The run folder of a raygap.train run."""
    return storage.join(root, name)


def pretrained(root: str, key: str) -> str:
    """The run folder of a cached natural model."""
    return storage.join(root, "pretrained", key)


def model(run_dir: str) -> str:
    return storage.join(run_dir, "model.pt")


def state(run_dir: str) -> str:
    return storage.join(run_dir, "state.pt")


def run_config(run_dir: str) -> str:
    return storage.join(run_dir, "config.yaml")


def diverged(run_dir: str) -> str:
    return storage.join(run_dir, "diverged.txt")


def final_eval(run_dir: str) -> str:
    return storage.join(run_dir, "final_eval.json")


def report(folder: str) -> str:
    return storage.join(folder, "report")
