"""One driver per experiment: the lease in the experiment folder (raygap.lock)."""

import json
import os
import socket
import subprocess
import threading
import time

import pytest

from raygap import lock, storage
from raygap.errors import UserError
from raygap.lock import DriverLock

from helpers import BUCKET_ROOT


def test_a_second_driver_is_refused_with_one_line_naming_the_first(tmp_path):
    experiment = tmp_path / "experiment"
    with DriverLock(str(experiment)) as first:
        with pytest.raises(UserError) as refused:
            DriverLock(str(experiment)).__enter__()
        message = str(refused.value)
        assert "\n" not in message
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message and "name=" in message
        assert first.holder()["token"] == first.me["token"]  # the refused driver did not overwrite the lease
    assert not experiment.exists()  # released at the end, with the folder only the lease was in
    (experiment / "trials").mkdir(parents=True)
    with DriverLock(str(experiment)):
        pass
    assert sorted(p.name for p in experiment.iterdir()) == ["trials"]  # a search's files stay


def _lease(path, **fields):
    path.mkdir(exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": "old",
              "heartbeat": time.time(), **fields}
    (path / "driver.lock").write_text(json.dumps(holder))


def test_a_killed_driver_does_not_hold_the_experiment(tmp_path):
    ended = subprocess.Popen(["true"])
    ended.wait()
    _lease(tmp_path, pid=ended.pid)  # a fresh lease of a process of this host that no longer runs
    with DriverLock(str(tmp_path)) as taken:
        assert taken.holder()["token"] == taken.me["token"]
    _lease(tmp_path, host="another-host", heartbeat=time.time() - lock.STALE_S - 1)  # stopped refreshing
    with DriverLock(str(tmp_path)):
        pass
    _lease(tmp_path, host="another-host")  # refreshed just now, on a host this driver cannot look into
    with pytest.raises(UserError, match="another-host"):
        DriverLock(str(tmp_path)).__enter__()


def test_the_holder_refreshes_its_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.1)
    with DriverLock(str(tmp_path)) as held:
        first = held.holder()["heartbeat"]
        time.sleep(0.5)
        assert held.holder()["heartbeat"] > first


def test_a_lease_taken_over_is_not_overwritten_by_its_old_holder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.1)
    with DriverLock(str(tmp_path)):
        _lease(tmp_path, token="new", pid=12345)  # another driver took over while this one stalled
        time.sleep(0.5)
        assert json.loads((tmp_path / "driver.lock").read_text())["token"] == "new"
    assert json.loads((tmp_path / "driver.lock").read_text())["token"] == "new"  # and not removed at the end
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "taken over by pid 12345" in warning


# The same lease in an S3 bucket (moto's server), where every write is S3's conditional PUT or DELETE

def test_the_driver_lease_works_in_a_bucket(s3):
    experiment = f"{BUCKET_ROOT}/leased"
    with DriverLock(experiment) as held:
        assert storage.exists(f"{experiment}/driver.lock") and held.holder()["token"] == held.me["token"]
        with pytest.raises(UserError, match=f"pid {os.getpid()} on"):
            DriverLock(experiment).__enter__()
    assert not storage.exists(f"{experiment}/driver.lock")


def _race(experiment: str, drivers: int) -> list:
    """`drivers` drivers entering the experiment at the same instant: the ones that got the lease."""
    start, won = threading.Barrier(drivers), []

    def enter():
        candidate = DriverLock(experiment)
        start.wait()
        try:
            candidate.__enter__()
            won.append(candidate)
        except UserError:
            pass

    threads = [threading.Thread(target=enter) for _ in range(drivers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


@pytest.mark.parametrize("stale", [False, True], ids=["new lease", "stale lease taken over"])
def test_of_drivers_starting_at_once_on_a_bucket_exactly_one_holds_the_lease(s3, monkeypatch, stale):
    monkeypatch.setattr(lock, "SETTLE_S", 0.0)  # no grace period to hide a race behind: only S3's precondition
    for round in range(10):
        experiment = f"{BUCKET_ROOT}/race-{stale}-{round}"
        if stale:  # a driver on another host stopped refreshing a minute ago
            holder = {"host": "gone", "pid": 1, "since": 0, "token": "old", "heartbeat": time.time() - lock.STALE_S - 1}
            storage.write_bytes(f"{experiment}/driver.lock", json.dumps(holder).encode())
        won = _race(experiment, 6)
        assert len(won) == 1, f"round {round}: {len(won)} drivers hold the lease"
        assert won[0].holder()["token"] == won[0].me["token"]
        won[0].__exit__(None, None, None)
        assert not storage.exists(f"{experiment}/driver.lock")


def test_a_stalled_driver_does_not_overwrite_its_successors_lease_in_a_bucket(s3, monkeypatch, capsys):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.1)
    experiment = f"{BUCKET_ROOT}/stalled"
    with DriverLock(experiment):
        # the successor took over while this driver stalled (its write is unconditional: it saw a stale lease)
        successor = {"host": "elsewhere", "pid": 4242, "since": time.time(), "token": "new", "heartbeat": time.time()}
        storage.write_bytes(f"{experiment}/driver.lock", json.dumps(successor).encode())
        time.sleep(0.6)  # several refreshes
        assert json.loads(storage.read_bytes(f"{experiment}/driver.lock"))["token"] == "new"
    assert json.loads(storage.read_bytes(f"{experiment}/driver.lock"))["token"] == "new"  # nor deleted at the end
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "taken over by pid 4242 on elsewhere" in warning
