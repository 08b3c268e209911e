"""One driver per experiment: the lease in the experiment folder (raygap.lock)."""

import json
import os
import socket
import subprocess
import time

import pytest

from raygap import lock
from raygap.errors import UserError
from raygap.lock import DriverLock


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
