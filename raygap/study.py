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

A crash in the middle of an append (power lost, SIGKILL) leaves the journal's last record cut short.
Optuna's reader skips such a tail, but its next append lands after it and the merged line makes every
later read fail (JSONDecodeError): the whole study lost to a few bytes. The driver, holding the
experiment's lease, calls `repair_journal` before it opens the study: a torn tail is dropped with one
line, damage anywhere else refused, naming the file. Readers (analysis, optuna-dashboard) never repair:
beside a live driver, a tail may be an append in flight, and Optuna's reader skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex

from raygap import layout, storage
from raygap.errors import UserError



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


def exists(optuna_storage: str, experiment_dir: str) -> bool:
    """Whether the experiment has a study to open (a PBT search has none), without making one: opening a
    journal that is not there creates it."""
    address = url(optuna_storage, experiment_dir)
    if "://" in address:
        return True
    fetch(experiment_dir)
    return os.path.isfile(address)


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


def repair_journal(path: str) -> None:
    """Drop a journal's last record if a crash cut it short (its bytes after the last newline), saying so
    in one line; refuse, naming the file, a journal damaged anywhere else. Whole records are kept as they are."""
    if not os.path.isfile(path):
        return
    with open(path, "rb") as fh:
        data = fh.read()
    whole = data.rfind(b"\n") + 1
    for number, line in enumerate(data[:whole].splitlines(), 1):
        try:
            json.loads(line)
        except ValueError:
            raise UserError(f"the Optuna journal {path} is damaged at record {number}, not at its end where a "
                            "crash would cut it: move it aside and run again (the search's tables stay; its "
                            "study starts afresh), or restore it from a backup") from None
    if whole < len(data):
        print(f"[study] the last record of {path} was cut short by a crash ({len(data) - whole} bytes): dropped; "
              "the study goes on from the whole records before it", flush=True)
        os.truncate(path, whole)


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
