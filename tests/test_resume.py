"""Stopping a whole run (Ctrl-C, or a kill of the driver and its local Ray cluster) and running the same
command again resumes it."""

import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from raygap import config, results
from raygap.recorder import Recorder

pytestmark = pytest.mark.slow  # kills and resumes a search


def test_a_ray_train_run_stopped_by_ctrl_c_then_killed_resumes_from_its_last_checkpoint_each_time(tmp_path,
                                                                                                  natural_digits):
    _, path = natural_digits
    args = [sys.executable, "-m", "raygap.train", f"storage={tmp_path}", "name=resumable", "method=vaft",
            "train.epochs=8", "train.workers=1", f"pretrained={path}"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    run_dir = str(tmp_path / "resumable")
    finished_at = lambda: results.read_table(run_dir, "epochs").set_index("epoch").finished_at  # noqa: E731

    def start_and_wait_for_epochs(n: int) -> subprocess.Popen:
        run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            checkpoints = [p for p in os.listdir(run_dir) if p.startswith("checkpoint_")] \
                if os.path.isdir(run_dir) else []
            if len(results.read_table(run_dir, "epochs")) >= n and checkpoints:
                return run
            assert run.poll() is None, run.stdout.read()
            time.sleep(0.5)
        raise AssertionError(f"the run never reached epoch {n}")

    # Ctrl-C in a terminal (the whole process group): Ray Train's own handler aborts the run
    first = start_and_wait_for_epochs(2)
    os.killpg(first.pid, signal.SIGINT)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 130, output[-3000:]
    assert output.strip().splitlines()[-1] == ("raygap: interrupted; run the same command again to resume where "
                                               "it stopped")
    interrupted = finished_at()

    second = start_and_wait_for_epochs(len(interrupted) + 1)
    os.killpg(second.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    second.wait()
    killed_at = time.time()

    third = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    # Judged by the epochs table, not by the workers' progress lines (Ray forwards those asynchronously,
    # so a driver that ends quickly may not print them): the epochs of the last checkpoint keep the times
    # they were first trained at, and at least the last one was trained by the third run.
    after = finished_at()
    assert sorted(after.index) == list(range(1, 9))
    assert after[1] == interrupted[1], "epoch 1 was trained again: the run started over"
    assert after[8] > killed_at, "the killed run had finished before the kill: nothing was resumed"
    assert third.stdout.strip().splitlines()[-1] == f"{run_dir}/model.pt"


def test_a_resumed_searchs_eta_is_paced_by_the_trials_this_driver_saw_end(tmp_path, capsys):
    recorder = Recorder(config.load([f"storage={tmp_path}", "tune.num_samples=10"]), "resumed")
    recorder.setup()
    recorder.rows = {f"earlier{i}": {"trial_id": f"earlier{i}", "status": "completed"} for i in range(5)}
    recorder.rows["now"] = {"trial_id": "now", "status": "completed", "robust_acc": 0.5}
    recorder.ended_now = {"now"}
    recorder.started = time.time() - 100  # this driver ended one trial in 100 s; 4 of 10 are left
    recorder._progress("now")
    line = capsys.readouterr().out
    assert "6/10 done" in line and line.rstrip().endswith("eta 00:06:40")  # not 100 s / 6 trials x 4 = 00:01:06


def test_a_resumed_search_paces_its_eta_from_its_own_start(tmp_path):
    recorder = Recorder(config.load([f"storage={tmp_path}"]), "resumed")
    vars(recorder)["started"] = time.time() - 3600  # the first session's start, as tuner.pkl may hold it
    restored = pickle.loads(pickle.dumps(recorder))  # Tuner.restore unpickles the callbacks from tuner.pkl
    restored.setup()
    assert time.time() - restored.started < 60
