"""One search driver per experiment: a lease, the file `driver.lock` in the experiment folder.

Two drivers on one experiment would both restore Tune's state and tell Optuna the same trials. Object
stores have no file locks, so the lock is a lease that works alike on a local disk, a shared filesystem
and a bucket: the driver writes who it is and refreshes the time every HEARTBEAT_S seconds. Another
driver refuses the experiment while that time is recent; it takes the lease over once it is older than
STALE_S (a killed driver stops refreshing), or at once when the holder is a process of this host that
no longer runs.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid

from raygap import layout, storage
from raygap.errors import StorageError, UserError

HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 0.5  # how long a new holder waits before reading the lease back: a racing driver's write lands first


class DriverLock:
    """`with DriverLock(experiment_dir):` holds the experiment's lease, or raises a UserError naming its holder."""

    def __init__(self, experiment_dir: str):
        self.experiment_dir = experiment_dir
        self.path = storage.join(experiment_dir, layout.LOCK)
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh, name="raygap-driver-lock", daemon=True)

    def __enter__(self):
        holder = self.holder()
        if holder and _alive(holder):
            raise UserError(self._refusal(holder))
        self._write()
        time.sleep(SETTLE_S)
        holder = self.holder()
        if not holder or holder["token"] != self.me["token"]:  # another driver wrote after us: it holds the lease
            raise UserError(self._refusal(holder or self.me))
        self._refresher.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._refresher.is_alive():
            self._refresher.join()
        holder = self.holder()
        if holder and holder["token"] == self.me["token"]:
            storage.remove(self.path)
        if not storage.is_uri(self.experiment_dir):  # a folder only the lease was in (a search refused at once)
            try:
                os.rmdir(self.experiment_dir)
            except OSError:
                pass  # not empty: the search's files stay

    def holder(self) -> dict | None:
        """The lease as its holder wrote it, or None when there is none (or it cannot be read)."""
        try:
            return json.loads(storage.read_bytes(self.path))
        except (OSError, ValueError):
            return None

    def _write(self) -> None:
        storage.write_bytes(self.path, json.dumps({**self.me, "heartbeat": time.time()}).encode())

    def _refresh(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder = self.holder()
            if holder and holder.get("token") != self.me["token"]:  # this driver stalled past STALE_S: taken over
                print(f"raygap: {self.path} was taken over by pid {holder.get('pid')} on {holder.get('host')} while "
                      f"this driver did not refresh it for {STALE_S:.0f} s; stop this driver (Ctrl-C): the other "
                      "one now searches the experiment", file=sys.stderr)
                return  # refreshing would overwrite the new holder's lease
            try:
                self._write()
            except StorageError:
                pass  # the next refresh tries again; the search's own writes report a storage that stays down

    def _refusal(self, holder: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["since"]))
        return (f"experiment {self.experiment_dir} is being searched by another driver (pid {holder['pid']} on "
                f"{holder['host']}, since {since}); wait for it to end, or choose another name=... (a driver "
                f"that stops refreshing {self.path} for {STALE_S:.0f} s is taken over)")


def _alive(holder: dict) -> bool:
    """Whether the lease's holder may still be running."""
    if time.time() - holder.get("heartbeat", 0) > STALE_S:
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it runs, as another user
            return True
    return True
