"""Faults a long search must survive, on a real local Ray cluster, and bad input to the search command.

The other faults of the matrix are tested beside the code they exercise: a Train worker killed with
SIGKILL (test_ray_train.py), the search driver killed with SIGKILL and a diverging trial (test_tune.py),
corrupt or foreign checkpoints and data (test_checkpoints.py, test_data.py, test_cli.py).
"""

import os
import shutil
import signal
import subprocess
import time

import pytest

from raygap import results
from helpers import tune_cli
from test_tune import check_tables

pytestmark = pytest.mark.slow  # searches on a local Ray cluster, with faults

ONE_EPOCH = ["train.epochs=1", "tune.scheduler.name=fifo"]


def _wait_for(predicate, proc, what, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"never saw {what}")


def test_ctrl_c_stops_cleanly_says_how_to_resume_and_the_same_command_finishes(tmp_path, natural_digits):
    args = ["name=interrupted", "tune.num_samples=2", "tune.max_concurrent=1", *ONE_EPOCH]
    first = tune_cli(tmp_path, natural_digits[1], *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     start_new_session=True)
    epochs = lambda: results.read_table(tmp_path / "interrupted", "epochs")  # noqa: E731
    _wait_for(lambda: len(epochs()) >= 1, first, "an epoch row")
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 130, output[-3000:]
    assert output.strip().splitlines()[-1] == ("raygap: interrupted; run the same command again to resume where "
                                               "it stopped")
    assert "leaderboard" not in output  # no summary of a search that did not finish

    second = tune_cli(tmp_path, natural_digits[1], *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout
    trials, _ = check_tables(tmp_path / "interrupted", train_epochs=1)
    assert len(trials) == 2 and set(trials.status) == {"completed"}


def test_a_trial_that_keeps_raising_is_retried_then_failed_and_the_search_goes_on(tmp_path, natural_digits,
                                                                                  monkeypatch):
    # every run of the search's first trial runs out of memory; the environment reaches Ray's workers
    monkeypatch.setenv("RAYGAP_TEST_OOM", "1")
    proc = tune_cli(tmp_path, natural_digits[1], "name=oom", "tune.num_samples=2", "tune.max_failures=1", *ONE_EPOCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials, _ = check_tables(tmp_path / "oom", train_epochs=1)
    raised = trials[trials.trial_id == (tmp_path / "oom" / ".test-oom-trial").read_text()]
    assert len(raised) == 1 and raised.status.item() == "failed" and raised.retries.item() == 1
    assert raised.error.item().startswith("OutOfMemoryError: test fault RAYGAP_TEST_OOM")
    assert set(trials.status) == {"failed", "completed"}  # the other trial went on
    assert proc.stdout.count("retry 1 of 1") == 1


def test_storage_that_becomes_unwritable_stops_with_one_line_and_keeps_what_was_written(tmp_path, natural_digits):
    args = ["name=readonly", "tune.num_samples=2", "tune.max_concurrent=1", *ONE_EPOCH]
    first = tune_cli(tmp_path, natural_digits[1], *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    experiment = tmp_path / "readonly"
    trials = lambda: results.read_table(experiment, "trials")  # noqa: E731
    _wait_for(lambda: not trials().empty and (trials().status == "completed").any(), first, "a completed trial")
    # The epochs folder stops taking files (as a bucket whose write permission was revoked): tests run as
    # root, which file modes do not stop, so a plain file takes the folder's place.
    shutil.move(experiment / "epochs", tmp_path / "epochs-before")
    (experiment / "epochs").write_text("not a folder")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 2, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("raygap: error: cannot write ") and "epochs" in line and "storage" in line
    # what was written stays readable: every trial row, and each epoch row of the completed trials
    written = results.read_table(experiment, "trials")
    before = results.read_table(tmp_path, "epochs-before")
    done = written[written.status == "completed"]
    assert len(done) >= 1 and set(done.trial_id) <= set(before.trial_id)
    assert not [p for p in (tmp_path / "epochs-before").iterdir() if p.name.endswith(".tmp")]


def _space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text("defaults: [afd, _self_]\ntune:\n  space:\n" + text)
    return f"search={path}"


BAD_SEARCHES = [  # (the overrides, made in a temporary folder; the message)
    (lambda p: [_space(p, "    attack.eps: {type: uniform, low: 0.2, high: 0.1}\n")], "is empty or inverted"),
    (lambda p: [_space(p, "    method.rank: {type: choice, values: [2]}\n")],
     "tune.space.method.rank names a key that does not exist"),
    (lambda p: [_space(p, "    train.seed: {type: choice, values: []}\n")], "is a choice with no values"),
    (lambda p: ["search=nonexistent_space"], "unknown search space 'nonexistent_space'; choose one of: afd,"),
    (lambda p: ["tune.num_samples=0"], "tune.num_samples and tune.max_concurrent must be >= 1"),
    (lambda p: ["tune.trial_resources={GPU:64}"], "needs 64 GPU but this machine has at most 0"),
    (lambda p: ["train.workers=1", "tune.trial_resources={CPU:0}"],
     "must ask for some resource for each trial's driver"),
]


@pytest.mark.parametrize("make,message", BAD_SEARCHES)
def test_bad_searches_are_one_line_exit_2_and_write_nothing(tmp_path, natural_digits, make, message):
    storage = tmp_path / "results"
    proc = tune_cli(storage, natural_digits[1], *make(tmp_path), "name=bad")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("raygap: error:"), proc.stderr
    assert message in lines[0]
    assert not storage.exists()


def test_a_corrupt_parquet_file_in_the_experiment_is_named_before_ray_starts(tmp_path, natural_digits):
    bad = tmp_path / "corrupt" / "trials" / "abc.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 this is not parquet")
    proc = tune_cli(tmp_path, natural_digits[1], "name=corrupt")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad} is not a readable Parquet file" in proc.stderr and "move it away" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "corrupt").rglob("*")) == ["abc.parquet", "trials"]


def test_a_reused_trial_process_keeps_nothing_of_the_previous_run(tmp_path, natural_digits):
    """Tune's reuse_actors keeps a trial's process for the next trial (ray #30414). After a run in this
    process and runner.free_memory, which run_trial calls first, no module of the run is alive, so on a
    GPU torch.cuda.empty_cache gives its memory back (no GPU here: that last step is not run on this machine)."""
    import gc

    import torch

    from raygap import config, runner, train

    def modules():
        return sum(isinstance(o, torch.nn.Module) for o in gc.get_objects())

    before = modules()
    cfg = config.load([f"storage={tmp_path}", f"pretrained={natural_digits[1]}", "train.epochs=1", "train.workers=0",
                       "eval.val_n=50"])
    train.run(cfg)
    runner.free_memory()
    assert modules() == before
