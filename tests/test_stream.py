"""Image trees streamed through Ray Data (raygap/stream.py), on a real local cluster (one per module) and
real JPEG files of mixed sizes in the ILSVRC-2012 layout."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from raygap import checkpoint, data, results, robustness, runner, storage, stream, train
from raygap.models import build_model

from helpers import BUCKET_ROOT, cifar_tree, imagenet_tree, load, run_main

STREAMED = ["data=imagenet", "data.image_size=32", "data.val_fraction=0.1", "eval.val_n=20", "model=smallcnn"]


@pytest.fixture(scope="module")
def cluster(s3):
    """A local cluster started after the S3 endpoint is set, so that its decoding tasks reach the bucket."""
    runner.connect()
    yield
    ray.shutdown()


def streamed(tmp_path, root, *overrides):
    cfg = load(*STREAMED, f"data.root={root}", *overrides, storage=tmp_path)
    return cfg, stream.load_dataset(cfg.data)


def indices(batches, epoch):
    return [int(i) for batch in batches.dataset(epoch).iter_torch_batches(batch_size=8) for i in batch["index"]]


def test_two_ranks_stream_every_training_image_once_in_a_seeded_order_that_replays(cluster, tmp_path):
    cfg, dataset = streamed(tmp_path, imagenet_tree(tmp_path))
    assert isinstance(dataset.train, stream.Files) and dataset.in_shape == (3, 32, 32)
    assert (len(dataset.train), len(dataset.val), len(dataset.test), dataset.num_classes) == (27, 3, 9, 3)
    ranks = [stream.batches(dataset.train, cfg.data, cfg.train, rank, 2, torch.device("cpu")) for rank in range(2)]
    seen = [indices(rank, 0) for rank in ranks]
    assert [len(s) for s in seen] == [13, 13]  # 27 images: the odd one is left out, as in memory
    assert not set(seen[0]) & set(seen[1]) and set(seen[0] + seen[1]) == set(data.epoch_order(27, 0, 0)[:26].tolist())
    assert seen[0] == ranks[0].shard(0).tolist()  # delivered in the seeded order, not as tasks finish
    assert indices(ranks[0], 1) != seen[0]  # each epoch its own order
    first, again = ([x for x, _ in ranks[0].epoch(0)] for _ in range(2))
    assert len(first) == ranks[0].steps and all(torch.equal(a, b) for a, b in zip(first, again))  # crops replay
    assert first[0].dtype == torch.float32 and first[0].shape[1:] == (3, 32, 32)
    assert 0 <= first[0].min() < first[0].max() <= 1


def test_a_damaged_image_met_mid_epoch_is_skipped_by_name_and_counted(cluster, tmp_path, capfd):
    root = imagenet_tree(tmp_path)
    damaged = sorted((root / "train" / "n00000001").iterdir())[2]
    cfg, dataset = streamed(tmp_path, root)
    damaged.write_bytes(damaged.read_bytes()[:200])  # cut short after the listing: met during the epoch
    batches = stream.batches(dataset.train, cfg.data, cfg.train, 0, 1, torch.device("cpu"))
    labels = torch.cat([y for _, y in batches.epoch(0)])
    assert len(labels) == batches.epoch_len - 1 and labels.min() >= 0 and batches.skipped == 1
    out = capfd.readouterr()
    assert f"skipped {damaged}: it cannot be decoded" in out.out and "rank 0 skipped 1 damaged images" in out.out
    # a run trains on through it, and its epochs table counts it
    cfg = load(*STREAMED, f"data.root={root}", "init=scratch", "method=natural", "train.epochs=1",
               "train.batch_size=8", "name=damaged", storage=tmp_path)
    train.run(cfg)
    assert list(results.read_table(str(tmp_path / "damaged"), "epochs").skipped_images) == [1]


def test_a_file_gone_after_the_listing_stops_the_epoch_rather_than_being_skipped_as_damaged(cluster, tmp_path):
    root = imagenet_tree(tmp_path)
    cfg, dataset = streamed(tmp_path, root)
    gone = Path(dataset.train.paths[0])
    gone.unlink()  # a disk that went away is not a damaged image: the epoch must not quietly train without it
    batches = stream.batches(dataset.train, cfg.data, cfg.train, 0, 1, torch.device("cpu"))
    with pytest.raises(Exception, match=gone.name):
        list(batches.epoch(0))


@pytest.mark.parametrize("size", [(1000, 10), (10, 1000), (2000, 30)])
def test_the_random_resized_crop_falls_back_as_torchvisions_does(size):
    """Images so far from square that no draw of 8-100% of the area at an aspect of 3/4-4/3 fits: both take
    the centre crop of the fallback, which must lie inside the image."""
    import torchvision.transforms as T

    top, left, height, width = T.RandomResizedCrop.get_params(torch.zeros(3, size[1], size[0]), [0.08, 1.0],
                                                              [3 / 4, 4 / 3])
    box = stream._random_resized_crop(size, np.random.default_rng(0))
    assert box == (left, top, width, height)
    assert 0 <= box[0] and box[0] + box[2] <= size[0] and 0 <= box[1] and box[1] + box[3] <= size[1]


def test_the_in_memory_and_streamed_paths_evaluate_a_checkpoint_alike(cluster, tmp_path):
    tree = cifar_tree(tmp_path)  # one size: both paths take the images as stored
    common = ["data=cifar10_folder", f"data.root={tree}", "eval.attacks=[clean,pgd20]", "eval.n=40",
              "model=smallcnn"]
    memory = load(*common, "data.stream=false", storage=tmp_path)
    dataset = stream.load_dataset(memory.data)
    model = build_model("smallcnn", dataset.in_shape, dataset.num_classes, dataset.mean, dataset.std)
    path = str(tmp_path / "model.pt")
    checkpoint.save(path, model, checkpoint.arch_of(model, "smallcnn", dataset.in_shape), {}, {"method": "natural"})
    figures = []
    for cfg in (memory, load(*common, "data.stream=true", storage=tmp_path)):
        cfg.checkpoint = path
        result = robustness.evaluate_checkpoint(cfg)
        figures.append((result["clean_acc"], result["pgd20_acc"], result["examples"]))
    assert isinstance(stream.load_dataset(load(*common, "data.stream=true", storage=tmp_path).data).test, stream.Files)
    assert figures[0] == figures[1]  # the same images, labels and outcome of each attack on each
    assert len(figures[0][2]["label"]) == 40 and figures[0][1] <= figures[0][0]


@pytest.mark.slow
def test_two_ray_train_workers_stream_and_one_killed_mid_epoch_resumes_as_if_never_killed(cluster, tmp_path,
                                                                                       monkeypatch):
    root = imagenet_tree(tmp_path, train_per_class=24)
    common = [*STREAMED, f"data.root={root}", "init=scratch", "method=natural", "train.epochs=2",
              "train.batch_size=16", "train.workers=2", "train.cpus_per_worker=0.45", "data.decode_cpus=0.25",
              "train.max_failures=1"]
    runs = {}
    for name, kill in (("whole", None), ("killed", "2:2")):  # the last rank, batch 2 of 4 in epoch 2
        if kill:
            monkeypatch.setenv("RAYGAP_TEST_KILL", kill)
        cfg = load(*common, f"name={name}", storage=tmp_path)
        runs[name] = train.run(cfg)
        epochs = results.read_table(storage.join(cfg.storage, name), "epochs")
        assert sorted(epochs.epoch) == [1, 2]  # each epoch once, though epoch 2 ran twice when killed
    assert os.path.exists(tmp_path / "killed" / ".test-kill-done")
    whole, killed = (runs[name]["metrics"] for name in ("whole", "killed"))
    # the replayed epoch read the same images in the same order with the same crops
    assert killed["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert (killed["clean_acc"], killed["robust_acc"]) == (whole["clean_acc"], whole["robust_acc"])


# A fresh process each call, so that its peak is this call's. glibc's malloc raises its mmap threshold as
# large blocks are freed, after which freed float batches (20 MB each here) stay in the heap and it grows by
# a batch now and then: a fixed threshold measures the pipeline rather than the allocator.
@ray.remote(num_cpus=0.5, max_calls=1, runtime_env={"env_vars": {"MALLOC_MMAP_THRESHOLD_": str(2 ** 20)}})
def images_and_peak_memory_of_an_epoch(cfg):
    def private_memory() -> int:
        """This process's anonymous resident memory: its own heap, not the object store's shared pages
        that reading blocks maps in (those count in its RSS, but belong to the node's object store)."""
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon:"))) * 1024

    dataset = stream.load_dataset(cfg.data)
    batches = stream.batches(dataset.train, cfg.data, cfg.train, 0, 1, torch.device("cpu"))
    images, peak = 0, private_memory()
    for _, y in batches.epoch(0):
        images, peak = images + len(y), max(peak, private_memory())
    return images, peak


@pytest.mark.slow
def test_a_workers_peak_memory_does_not_grow_with_the_number_of_images(cluster, tmp_path):
    measured = []
    for classes, per_class in ((3, 10), (10, 29)):
        root = imagenet_tree(tmp_path / f"{classes}", classes=classes, train_per_class=per_class, val_per_class=1)
        cfg = load(*STREAMED, f"data.root={root}", "data.image_size=320", "data.val_fraction=0",
                   "train.keep=last", "train.batch_size=16", storage=tmp_path)
        measured.append(ray.get(images_and_peak_memory_of_an_epoch.remote(cfg)))
    (small, small_peak), (large, large_peak) = measured
    held = (large - small) * 3 * 320 * 320  # what holding the extra images decoded would take: 80 MB
    assert (small, large) == (30, 290) and large_peak - small_peak < held / 3, measured


def test_a_tree_in_a_bucket_is_listed_and_streamed(cluster, tmp_path):
    import boto3

    root = imagenet_tree(tmp_path, train_per_class=4, val_per_class=1)
    bucket, prefix = BUCKET_ROOT[len("s3://"):].split("/", 1)
    client = boto3.client("s3")
    for path in root.rglob("*.JPEG"):
        client.upload_file(str(path), bucket, f"{prefix}/imagenet/{path.relative_to(root)}")
    cfg, dataset = streamed(tmp_path, f"{BUCKET_ROOT}/imagenet")
    local = streamed(tmp_path, root)[1]
    assert len(dataset.train) == len(local.train) == 11 and dataset.train.paths[0].startswith("s3://")
    batches = stream.batches(dataset.train, cfg.data, cfg.train, 0, 1, torch.device("cpu"))
    local_batches = stream.batches(local.train, cfg.data, cfg.train, 0, 1, torch.device("cpu"))
    assert torch.equal(torch.cat([x for x, _ in batches.epoch(0)]), torch.cat([x for x, _ in local_batches.epoch(0)]))
    # and trains on it: a Ray Train worker's decoding tasks read the bucket, the run's tables go there too
    cfg = load(*STREAMED, f"data.root={BUCKET_ROOT}/imagenet", "init=scratch", "method=natural", "train.epochs=1",
               "train.workers=1", "train.cpus_per_worker=0.5", "train.batch_size=4", "name=bucket",
               storage=BUCKET_ROOT)
    trained = train.run(cfg)
    epochs = results.read_table(storage.join(BUCKET_ROOT, "bucket"), "epochs")
    assert list(epochs.epoch) == [1] and trained["checkpoint"].startswith("s3://")
    assert trained["metrics"]["robust_acc"] <= trained["metrics"]["clean_acc"]


SEARCH = """
defaults: [raygap, _self_]
tune:
  space:
    train.lr: {type: choice, values: [0.01, 0.02, 0.05]}
"""


@pytest.mark.slow
def test_concurrent_streamed_trials_that_fill_the_machine_keep_cpus_for_their_decoding(cluster, tmp_path):
    """Three trials of 0.6 CPU fit two cores at once and leave 0.2 CPU, less than one decoding task's 0.4:
    every trial would wait for ever on its first batch. Each trial reserves its decoding CPUs beside it, so
    two run at once (filling the machine), and the third after them."""
    root = imagenet_tree(tmp_path, train_per_class=4, val_per_class=1)
    space = tmp_path / "space.yaml"
    space.write_text(SEARCH)
    command = [sys.executable, "-m", "raygap.tune", f"search={space}", *STREAMED, f"data.root={root}",
               f"storage={tmp_path}", "name=streamed", "init=scratch", "method=natural", "train.epochs=1",
               "train.batch_size=8", "train.workers=0", "train.cpus_per_worker=0.5", "data.decode_cpus=0.4",
               "tune.num_samples=3", "tune.max_concurrent=3", "tune.scheduler.name=fifo", "final_eval.top_k=0"]
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = results.read_table(tmp_path / "streamed", "trials")
    assert len(trials) == 3 and set(trials.status) == {"completed"}
    spans = sorted(zip(trials.started_at, trials.ended_at))
    at_once = [sum(start <= moment < end for start, end in spans) for moment, _ in spans]
    assert max(at_once) == 2, spans


def bad(tmp_path, *overrides):
    return run_main("train", "init=scratch", "method=natural", f"storage={tmp_path}", *overrides)


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "train" / "n00000001" / "notes.txt").write_text("x"), "notes.txt is not an image"),
    (lambda root: [p.unlink() for p in (root / "val" / "n00000002").iterdir()], "n00000002 has no images"),
    (lambda root: shutil.move(root / "val" / "n00000002", root / "val" / "n00000009"),
     "have different class folders (n00000002 is in only one"),
    (lambda root: shutil.rmtree(root / "val"), "val is missing: ImageNet is read as"),
    (lambda root: shutil.rmtree(root), "is not a folder that can be read"),
])
def test_a_bad_tree_is_one_line_naming_what_is_wrong(tmp_path, damage, message):
    root = imagenet_tree(tmp_path, train_per_class=2, val_per_class=1)
    damage(root)
    proc = bad(tmp_path, *STREAMED, f"data.root={root}")
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*/model.pt"))


@pytest.mark.parametrize("unreadable, message", [("", "is not a folder that can be read"),
                                                   ("val/n00000001", "val/n00000001: permission denied")])
def test_a_tree_that_cannot_be_read_is_one_line_naming_it(tmp_path, unreadable, message):
    """As a user without read access: as root, with the capabilities that bypass file permissions dropped."""
    root = imagenet_tree(tmp_path, train_per_class=2, val_per_class=1)
    (root / unreadable).chmod(0)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root, and no setpriv to drop the capabilities that bypass file permissions")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    try:
        proc = subprocess.run([*prefix, sys.executable, "-m", "raygap.train", "init=scratch", "method=natural",
                               f"storage={tmp_path}", *STREAMED, f"data.root={root}"],
                              capture_output=True, text=True, timeout=300)
    finally:
        (root / unreadable).chmod(0o755)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("overrides, message", [
    (["data=digits", "data.stream=true"], "data.stream=true streams a tree of image files"),
    (["data=imagenet", "data.root=/x", "data.stream=false"], "data.stream=false cannot hold ImageNet in memory"),
    (["data=folder", "data.root=/x", "data.image_size=64"], "data.mean and data.std are required"),
    (["data=folder", "data.root=/x", "data.stream=maybe"], "data.stream must be auto, true or false"),
])
def test_a_streaming_setting_that_cannot_work_is_refused_before_anything_runs(tmp_path, overrides, message):
    proc = bad(tmp_path, *overrides)
    assert proc.returncode == 2 and message in proc.stderr
