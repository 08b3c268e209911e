"""Where the search keeps its Optuna study, and how the driver, raygap.analysis and optuna-dashboard open it.

- `tune.optuna_storage` set: that RDB URL (postgresql://, mysql://, sqlite:///...), as given.
- Otherwise Optuna's journal, an append-only log of the study's operations, `optuna.journal` in the
  experiment folder on a local or shared filesystem. Unlike SQLite it takes a live reader beside the
  writer ("database is locked": optuna #820, optuna-dashboard #545), and needs no server.
- On an object store, which cannot append, the journal is written on the driver's disk (one path per
  experiment under $XDG_CACHE_HOME/raygap/studies, by default ~/.cache/raygap/studies: Tune's saved
  searcher state refers to it, so a resumed driver must find it there) and copied to `optuna.journal`
  in the bucket's experiment folder at each trial's end, each time Tune saves its own state and at the
  search's end; a driver fetches it before it resumes. Chosen over requiring an RDB there: a bucket alone
  is enough to run and resume a search, and the copy is never older than the searcher state Tune saved
  beside it (see Recorder.get_state).
- Experiments begun before the journal (2026-11-24) keep their SQLite study, optuna.db.
"""

from __future__ import annotations

import hashlib
import os
import shlex

from raygap import layout, storage



def _in_bucket(experiment_dir: str) -> bool:
    return storage.is_uri(experiment_dir) and not experiment_dir.startswith("file://")


def journal_path(experiment_dir: str) -> str:
    """The journal file this machine reads and appends to."""
    if not _in_bucket(experiment_dir):
        return os.path.join(storage.filesystem(experiment_dir)[1], layout.JOURNAL)
    key = hashlib.sha256(experiment_dir.rstrip("/").encode()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "raygap", "studies", key, layout.JOURNAL)


def _sqlite_of_old(experiment_dir: str) -> str | None:
    """The SQLite study of an experiment begun before the journal, if there is one."""
    folder = experiment_dir if not storage.is_uri(experiment_dir) else os.path.join(
        "raygap_results", experiment_dir.rstrip("/").rsplit("/", 1)[-1])
    path = os.path.abspath(os.path.join(folder, "optuna.db"))
    return f"sqlite:///{path}" if os.path.isfile(path) else None


def url(optuna_storage: str, experiment_dir: str) -> str:
    """The study's address as optuna-dashboard takes it: an RDB URL or the journal file's path."""
    return optuna_storage or _sqlite_of_old(experiment_dir) or journal_path(experiment_dir)


def dashboard_command(optuna_storage: str, experiment_dir: str) -> str:
    return f"optuna-dashboard {shlex.quote(url(optuna_storage, experiment_dir))}"


def open_storage(optuna_storage: str, experiment_dir: str):
    """The Optuna storage of the experiment's study (on an object store, the bucket's journal fetched first)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    address = url(optuna_storage, experiment_dir)
    if "://" in address:
        return optuna.storages.RDBStorage(address)
    fetch(experiment_dir)
    os.makedirs(os.path.dirname(address), exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(address))


def fetch(experiment_dir: str) -> None:
    """Copy the bucket's journal to this machine when it is newer (larger: the journal only grows)."""
    if not _in_bucket(experiment_dir):
        return
    remote, local = storage.join(experiment_dir, layout.JOURNAL), journal_path(experiment_dir)
    if storage.exists(remote):
        data = storage.read_bytes(remote)
        if not os.path.isfile(local) or os.path.getsize(local) < len(data):
            storage.write_bytes(local, data)


def push(experiment_dir: str) -> None:
    """Copy this machine's journal to the bucket (a whole object: readers never see half of it)."""
    local = journal_path(experiment_dir)
    if _in_bucket(experiment_dir) and os.path.isfile(local):
        with open(local, "rb") as fh:
            storage.write_bytes(storage.join(experiment_dir, layout.JOURNAL), fh.read())
