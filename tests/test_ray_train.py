"""Ray Train on a real local cluster (one per module): DDP across workers and worker fault tolerance."""

import os

import pytest
import ray
import torch

from raygap import results, runner, storage, train
from raygap.errors import UserError

from helpers import load

pytestmark = pytest.mark.slow  # runs Ray Train on a local cluster


@pytest.fixture(scope="module")
def cluster():
    runner.connect()  # a local cluster on 127.0.0.1 with this machine's CPUs
    yield
    ray.shutdown()


def run(tmp_path, path, name, *overrides):
    cfg = load("method=vaft", "train.epochs=3", f"pretrained={path}", f"name={name}", *overrides, storage=tmp_path)
    return cfg, train.run(cfg)


def test_two_workers_match_one_worker_with_the_same_global_batch(cluster, tmp_path, natural_digits):
    _, path = natural_digits
    metrics = {}
    for workers in (1, 2):
        cfg, result = run(tmp_path, path, f"w{workers}", f"train.workers={workers}")
        metrics[workers] = result["metrics"]
        epochs = results.read_table(storage.join(cfg.storage, f"w{workers}"), "epochs")
        assert sorted(epochs.epoch) == [1, 2, 3] and set(epochs.trial_id) == {f"w{workers}"}
        assert (epochs["train.workers"] == workers).all()
    # Same global batches in the same order; only the attacks' random starts differ between ranks.
    assert metrics[2]["clean_acc"] == pytest.approx(metrics[1]["clean_acc"], abs=0.03)
    assert metrics[2]["robust_acc"] == pytest.approx(metrics[1]["robust_acc"], abs=0.05)
    assert metrics[2]["loss"] == pytest.approx(metrics[1]["loss"], rel=0.15)


def test_a_worker_killed_mid_epoch_is_restarted_from_its_checkpoint(cluster, tmp_path, natural_digits, monkeypatch):
    _, path = natural_digits
    monkeypatch.setenv("RAYGAP_TEST_KILL", "2:8")  # SIGKILL the last rank at batch 8 (of 10) of epoch 2, once
    cfg, result = run(tmp_path, path, "faulty", "train.workers=2", "train.max_failures=1")
    run_dir = storage.join(cfg.storage, "faulty")
    killed_at = os.path.getmtime(storage.join(run_dir, ".test-kill-done"))
    epochs = results.read_table(run_dir, "epochs").set_index("epoch")
    assert sorted(epochs.index) == [1, 2, 3]  # each epoch exactly once
    assert epochs.loc[1, "finished_at"] < killed_at < epochs.loc[2, "finished_at"]  # only epoch 2 ran again
    assert result["metrics"]["epoch"] == 3 and storage.exists(result["checkpoint"])


def test_resources_the_machine_can_never_provide_are_refused(tmp_path, natural_digits):
    _, path = natural_digits
    cfg = load("method=vaft", "train.workers=64", f"pretrained={path}", storage=tmp_path)
    with pytest.raises(Exception, match="needs 64 CPU but this machine has at most"):
        train.run(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that this machine lacks")
@pytest.mark.parametrize("workers", [0, 1])
def test_a_gpu_this_machine_lacks_is_refused_wherever_the_run_would_run(tmp_path, natural_digits, workers):
    cfg = load("method=vaft", f"train.workers={workers}", "train.gpus_per_worker=1", f"pretrained={natural_digits[1]}",
               storage=tmp_path)
    with pytest.raises(UserError, match="the run needs 1 GPU but this machine"):
        train.run(cfg)  # with workers=0 it used to train on the CPU
    assert not (tmp_path / train.run_name(cfg)).exists()
