"""Test-only faults, switched on by environment variables that the reliability tests set; both hooks
do nothing unless their variable is set. The loop calls `at_start` once and `each_batch` per batch."""

from __future__ import annotations

import os
import signal
import time

import torch

from raygap import storage


def at_start(job) -> None:
    """RAYGAP_TEST_OOM=1: every run of the first trial of a search to start raises an out-of-memory
    error (the trial claims a marker file in the local experiment folder)."""
    if not os.environ.get("RAYGAP_TEST_OOM") or job.experiment_dir == job.run_dir:
        return
    claim = os.path.join(job.experiment_dir, ".test-oom-trial")
    try:
        with open(claim, "x") as fh:
            fh.write(job.trial_id)
    except FileExistsError:
        pass
    with open(claim) as fh:
        if fh.read() == job.trial_id:
            raise torch.OutOfMemoryError(f"test fault RAYGAP_TEST_OOM in trial {job.trial_id}: out of memory")


def each_batch(job, rank: int, world: int, epoch: int, batch: int) -> None:
    """RAYGAP_TEST_KILL=<epoch>:<batch> kills the last rank's process once, mid-epoch."""
    target = os.environ.get("RAYGAP_TEST_KILL")
    if not target or target != f"{epoch + 1}:{batch}" or rank != world - 1:
        return
    marker = storage.join(job.run_dir, ".test-kill-done")
    if storage.exists(marker):
        return
    # Ray Train's controller registers a reported checkpoint when it next polls the workers: a kill
    # within a second of the last report may find it unregistered, and the run would restart from the
    # one before. Wait as a crash later in a real epoch would have, so the test is about the restart.
    time.sleep(3)
    storage.write_bytes(marker, b"")
    os.kill(os.getpid(), signal.SIGKILL)
