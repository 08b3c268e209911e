"""Test-only faults, switched on by environment variables that the reliability tests set; every hook
does nothing unless its variable is set. The loop calls `at_start` once and `each_batch` per batch; the
driver and the trials call `crash` at the points named in CRASH_POINTS and POPULATION_CRASH_POINTS."""

from __future__ import annotations

import os
import signal
import time

import torch

from raygap import storage


# Where `crash` is called, in the order a search reaches them (tests/test_crash.py kills a search at each)
CRASH_POINTS = {
    "before_trials": "the driver, its Tuner built (Tune's tuner.pkl written), before the first trial starts",
    "tune_save": "the driver, in the middle of Tune's save of its experiment state, before the upload",
    "mid_epoch": "a trial, in the middle of its second epoch (its first epoch's checkpoint saved)",
    "trial_ended": "the driver, when a trial has ended, before its row in the trials table is written",
    "journal_append": "the driver, right after the study was told a trial's result (an append to the journal)",
    "final_eval": "the driver, when a finalist's examples are written, before its test columns are",
}
# Where a PBT search alone calls `crash` (tests/test_pbt.py)
POPULATION_CRASH_POINTS = {
    "exploited": "the driver, right after PBT handed a trial another's state (the search's state saved naming it), "
                 "before the trial restarts from it",
}


def crash(point: str) -> None:
    """RAYGAP_TEST_CRASH=<point>: the machine loses power there: SIGKILL at once to every process of the
    search's session (the driver, Ray's processes and the trials, which run in process groups of their
    own). The test starts the command in a session of its own (never set this in a shell: it is killed too)."""
    if os.environ.get("RAYGAP_TEST_CRASH") != point:
        return
    assert point in CRASH_POINTS or point in POPULATION_CRASH_POINTS, point
    kill_session(os.getsid(0))


def kill_session(session: int) -> None:
    """SIGKILL to every process of `session` (the calling process last, if it is one of them): a lost machine."""
    me = os.getpid()
    for pid in [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != me]:
        try:
            if os.getsid(pid) == session:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if os.getsid(0) == session:
        os.kill(me, signal.SIGKILL)


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
    if epoch == 1 and batch == 1:
        crash("mid_epoch")
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
