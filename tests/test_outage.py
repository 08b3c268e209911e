"""A bucket that stops answering (moto's S3 server paused with SIGSTOP, resumed with SIGCONT): raygap's
writes wait for it with a bounded back-off and say so in one line; past the bound they stop with one line
and nothing half-written; the driver's lease outlives a pause."""

import os
import signal
import threading
import time

import pytest

from raygap import lock, storage
from raygap.errors import StorageError
from raygap.lock import DriverLock

from helpers import BUCKET_ROOT


class Outage:
    """stop(seconds): pause the S3 server now and resume it `seconds` later (None: at resume())."""

    def __init__(self, server):
        self.server, self.timers = server, []

    def stop(self, seconds=None):
        os.kill(self.server.pid, signal.SIGSTOP)
        if seconds is not None:
            self.timers.append(threading.Timer(seconds, self.resume))
            self.timers[-1].start()

    def resume(self):
        os.kill(self.server.pid, signal.SIGCONT)


@pytest.fixture
def outage(s3, monkeypatch):
    monkeypatch.setattr(storage, "REQUEST_TIMEOUT_S", 1.0)  # find the outage in seconds, not tens of them
    outage = Outage(s3["server"])
    yield outage
    for timer in outage.timers:
        timer.cancel()
    outage.resume()


def test_a_write_waits_out_a_short_outage_and_says_so_in_one_line(outage, capfd):
    path = f"{BUCKET_ROOT}/outage/short.bin"
    storage.write_bytes(path, b"before")
    capfd.readouterr()
    outage.stop(8)
    started = time.monotonic()
    storage.write_bytes(path, b"after")
    assert time.monotonic() - started >= 7  # it did wait for the server
    assert storage.read_bytes(path) == b"after"
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"raygap: storage {path} does not answer" in err and "retrying for up to" in err


def test_an_outage_longer_than_the_bound_stops_with_one_line_and_nothing_half_written(outage, monkeypatch, capfd):
    path = f"{BUCKET_ROOT}/outage/long.bin"
    storage.write_bytes(path, b"whole")
    monkeypatch.setattr(storage, "RETRY_S", 4.0)
    outage.stop()
    with pytest.raises(StorageError) as stopped:
        storage.write_bytes(path, b"never")
    message = str(stopped.value)
    assert "\n" not in message and message.startswith(f"storage {path} did not answer for 4 s")
    assert "run the same command again" in message
    outage.resume()
    assert storage.read_bytes(path) == b"whole"  # the last whole write, not a part of the one that failed
    storage.write_bytes(path, b"again")  # and the same call works once the bucket answers
    assert storage.read_bytes(path) == b"again"


def test_the_lease_outlives_a_pause_of_the_bucket(outage, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.5)
    experiment = f"{BUCKET_ROOT}/outage-lease"
    with DriverLock(experiment) as held:
        before = held.holder()["heartbeat"]
        outage.stop(4)
        time.sleep(9)  # refreshes fail while it is paused, then succeed again
        assert held.holder()["token"] == held.me["token"] and held.holder()["heartbeat"] > before + 4
    assert not storage.exists(f"{experiment}/driver.lock")
