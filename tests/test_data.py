"""Each loader reads a small fixture written in the data set's real on-disk format."""

import pickle
import re
import shutil
import struct

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from raygap import data
from raygap.errors import UserError

from helpers import CIFAR_SAMPLE, cifar_tree, load, run_cli, tiny_imagenet_tree

RNG = np.random.default_rng(0)


def images(n, c, h, w):
    return RNG.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def write_cifar10(root, per_batch=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": images(per_batch, 3, 32, 32).reshape(per_batch, -1),
                 "labels": list(RNG.integers(0, 10, per_batch))}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)


def write_idx(folder, prefix, n):
    folder.mkdir(parents=True, exist_ok=True)
    pixels = images(n, 1, 28, 28)[:, 0]
    with open(folder / f"{prefix}-images-idx3-ubyte", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, n, 28, 28) + pixels.tobytes())
    with open(folder / f"{prefix}-labels-idx1-ubyte", "wb") as fh:
        fh.write(struct.pack(">II", 2049, n) + RNG.integers(0, 10, n, dtype=np.uint8).tobytes())
    return pixels


def test_digits_splits_are_seeded_disjoint_and_complete(tmp_path):
    cfg = load(storage=tmp_path)
    a, b = data.load(cfg.data), data.load(cfg.data)
    assert (len(a.train), len(a.val), len(a.test)) == (1222, 216, 359)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.test.y, b.test.y)
    other = data.load(load("data.split_seed=1", storage=tmp_path).data)
    assert not torch.equal(a.test.x, other.test.x)
    rows = {bytes(x.numpy()) for split in (a.train, a.val, a.test) for x in split.x}
    assert len(rows) > 1700  # the three splits are disjoint (a few digits are exact duplicates)
    assert a.in_shape == (1, 8, 8) and a.num_classes == 10 and a.train.x.dtype == torch.uint8


def test_cifar10_pickle_batches(tmp_path):
    write_cifar10(tmp_path)
    dataset = data.load(load("data=cifar10", f"data.root={tmp_path}", storage=tmp_path).data)
    assert dataset.in_shape == (3, 32, 32)
    assert len(dataset.test) == 20  # the official test batch
    assert len(dataset.train) + len(dataset.val) == 100
    assert dataset.mean == pytest.approx([0.4914, 0.4822, 0.4465])


def test_cifar100_pickle_files(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 50), ("test", 10)):
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": images(n, 3, 32, 32).reshape(n, -1), "fine_labels": list(range(n))}, fh)
    dataset = data.load(load("data=cifar100", f"data.root={tmp_path}", storage=tmp_path).data)
    assert dataset.num_classes == 50 and len(dataset.test) == 10


def test_tiny_imagenet_official_layout_labels_val_images_from_their_annotations(tmp_path):
    root = tiny_imagenet_tree(tmp_path)
    for given in (root, root.parent):  # the unzipped folder, or the folder holding it
        cfg = load("data=tiny_imagenet", f"data.root={given}", "data.val_fraction=0.25", storage=tmp_path)
        dataset = data.load(cfg.data)
        assert dataset.in_shape == (3, 64, 64) and dataset.num_classes == 3
        assert (len(dataset.train) + len(dataset.val), len(dataset.test)) == (18, 6)  # val/ is the test split
    # the labels of the test split are the annotations' classes, in sorted-wnid order (wnids.txt is not sorted)
    lines = (root / "val" / "val_annotations.txt").read_text().splitlines()
    by_name = {line.split("\t")[0]: int(line.split("\t")[1][1:]) for line in lines}
    names = sorted(p.name for p in (root / "val" / "images").iterdir())
    assert dataset.test.y.tolist() == [by_name[name] for name in names]
    first = np.asarray(Image.open(root / "val" / "images" / names[0]).convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(dataset.test.x[0], torch.from_numpy(first))


def test_a_tiny_imagenet_zip_is_checked_then_extracted_whole(tmp_path, monkeypatch):
    import hashlib
    import zipfile

    root = tiny_imagenet_tree(tmp_path / "made")
    archive = tmp_path / "data" / "tiny-imagenet-200.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(root.parent))
    # this zip stands in for the official one: its own MD5 is the expected one
    monkeypatch.setattr(data, "TINY_IMAGENET", (data.TINY_IMAGENET[0], hashlib.md5(archive.read_bytes()).hexdigest()))
    dataset = data.load(load("data=tiny_imagenet", f"data.root={archive.parent}", storage=tmp_path).data)
    assert len(dataset.test) == 6 and (archive.parent / "tiny-imagenet-200" / "wnids.txt").is_file()
    assert not list(archive.parent.glob(".tiny-imagenet-200-*"))  # the temporary extraction is gone


def break_tiny(root, how):
    if how == "annotations":
        (root / "val" / "val_annotations.txt").unlink()
        return "val_annotations.txt is missing"
    if how == "wnid":
        shutil.copytree(root / "train" / "n00000000", root / "train" / "n99999999")
        return "n99999999 is not a class of .*wnids.txt"
    if how == "annotated_wnid":
        path = root / "val" / "val_annotations.txt"
        path.write_text(path.read_text().replace("\tn00000001\t", "\tn12345678\t", 1))
        return "val_annotations.txt line \\d+ names no class of"
    if how == "damaged":
        (root / "train" / "n00000002" / "images" / "n00000002_3.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        return "cannot decode image .*n00000002_3.JPEG"
    if how == "imagefolder":
        shutil.rmtree(root)
        shutil.copytree(CIFAR_SAMPLE, root)
        return "is not the Tiny-ImageNet archive's layout .* an ImageFolder tree is data=folder"
    if how == "cifar":
        shutil.rmtree(root)
        (root / "cifar-10-batches-py").mkdir(parents=True)
        return "holds CIFAR, not Tiny-ImageNet; use data=cifar10"
    shutil.rmtree(root)  # a zip that is not the official archive
    root.mkdir()
    (root / "tiny-imagenet-200.zip").write_bytes(b"PK\x03\x04 not the archive")
    return ("tiny-imagenet-200.zip is not the official archive "
            "\\(MD5 [0-9a-f]{32}, expected 90528d7ca1a48142e341f4ef8d21d0de\\)")


@pytest.mark.parametrize("how", ["annotations", "wnid", "annotated_wnid", "damaged", "imagefolder", "cifar",
                                 "checksum"])
def test_a_broken_tiny_imagenet_is_one_line_exit_2_and_nothing_cached(tmp_path, how):
    root = tiny_imagenet_tree(tmp_path)
    message = break_tiny(root, how)
    proc = run_cli("pretrain", "data=tiny_imagenet", f"data.root={root}", f"storage={tmp_path / 'results'}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert re.search(message, lines[0]), lines[0]
    # nothing cached or half-extracted
    assert not list(root.rglob("*.npz")) and not list(root.glob(".tiny-imagenet-200-*"))
    assert not (tmp_path / "results").exists()


def test_mnist_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    pixels = write_idx(raw, "train", 40)
    write_idx(raw, "t10k", 12)
    dataset = data.load(load("data=mnist", f"data.root={tmp_path}", storage=tmp_path).data)
    assert dataset.in_shape == (1, 28, 28) and len(dataset.test) == 12
    everything = torch.cat([dataset.train.x, dataset.val.x])[:, 0]
    assert sorted(map(bytes, everything.numpy())) == sorted(map(bytes, pixels))


def test_svhn_mat_files(tmp_path):
    for split, n in (("train", 30), ("test", 10)):
        x = images(n, 3, 32, 32).transpose(2, 3, 1, 0)  # SVHN stores H x W x C x N
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.full((n, 1), 10)})
    dataset = data.load(load("data=svhn", f"data.root={tmp_path}", storage=tmp_path).data)
    assert dataset.in_shape == (3, 32, 32)
    assert int(dataset.test.y.max()) == 0  # label 10 is the digit 0


def test_image_folder_tree(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(15):
            Image.fromarray(images(1, 3, 16, 16)[0].transpose(1, 2, 0)).save(tmp_path / cls / f"{i}.png")
    dataset = data.load(load("data=folder", f"data.root={tmp_path}", storage=tmp_path).data)
    assert dataset.in_shape == (3, 16, 16) and dataset.num_classes == 2
    assert len(dataset.train) + len(dataset.val) + len(dataset.test) == 30


def load_tree(tree):
    return data.load(load("data=cifar10_folder", f"data.root={tree}", storage=tree.parent / "results").data)


def test_cifar10_jpeg_tree_gets_the_cifar_settings_and_is_decoded_once(tmp_path, capsys):
    tree = cifar_tree(tmp_path)
    first = load_tree(tree)
    assert "decoding 300 images" in capsys.readouterr().out
    assert first.in_shape == (3, 32, 32) and first.num_classes == 10
    assert (len(first.train), len(first.val), len(first.test)) == (216, 24, 60)  # test carved: 20% of 300
    cfg = load("data=cifar10_folder", f"data.root={tree}", storage=tmp_path).data
    assert (cfg.eps, cfg.crop_padding, cfg.flip) == (8 / 255, 4, True)
    airplane = Image.open(CIFAR_SAMPLE / "train" / "airplane" / "0000.jpg").convert("RGB")
    airplane = np.asarray(airplane).transpose(2, 0, 1)
    everything = torch.cat([first.train.x, first.val.x, first.test.x]).numpy()
    labels = torch.cat([first.train.y, first.val.y, first.test.y]).numpy()
    assert labels[[i for i, x in enumerate(everything) if np.array_equal(x, airplane)]].tolist() == [0]

    again = load_tree(tree)
    assert "decoding" not in capsys.readouterr().out  # read from the cache
    assert torch.equal(again.train.x, first.train.x) and torch.equal(again.test.y, first.test.y)

    shutil.copy(CIFAR_SAMPLE / "train" / "cat" / "0000.jpg", tree / "train" / "dog" / "extra.jpg")
    changed = load_tree(tree)
    assert "the tree changed since its cache" in capsys.readouterr().out
    assert len(changed.train) + len(changed.val) + len(changed.test) == 301
    assert len(list((tree / ".raygap_cache").glob("*.npz"))) == 1  # the stale cache is gone


def break_tree(tree, how):
    if how == "size":
        Image.fromarray(images(1, 3, 16, 16)[0].transpose(1, 2, 0)).save(tree / "train" / "cat" / "small.png")
        return "small.png"
    if how == "empty":
        (tree / "train" / "zebra").mkdir()
        return "zebra has no images"
    if how == "stray":
        (tree / "train" / "cat" / "notes.txt").write_text("not an image")
        return "notes.txt is not an image"
    (tree / "train" / "cat" / "0003.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return "cannot decode image .*0003.jpg"


@pytest.mark.parametrize("how", ["size", "empty", "stray", "corrupt"])
def test_a_broken_tree_is_refused_by_name_and_nothing_is_cached(tmp_path, how):
    tree = cifar_tree(tmp_path)
    message = break_tree(tree, how)
    with pytest.raises(UserError, match=message):
        load_tree(tree)
    assert not list(tree.glob(".raygap_cache/*"))


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_npz_arrays(tmp_path, layout):
    x = images(50, 3, 12, 12)
    np.savez(tmp_path / "d.npz", x=x.transpose(0, 2, 3, 1) if layout == "nhwc" else x, y=RNG.integers(0, 4, 50))
    dataset = data.load(load("data=npz", f"data.path={tmp_path / 'd.npz'}", storage=tmp_path).data)
    assert dataset.in_shape == (3, 12, 12)
    everything = torch.cat([dataset.train.x, dataset.val.x, dataset.test.x])
    assert sorted(map(bytes, everything.numpy())) == sorted(map(bytes, x))


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="data.download=true"):
        data.load(load("data=cifar10", f"data.root={tmp_path}", storage=tmp_path).data)


def test_corrupt_cifar_batch_is_refused(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read .*data_batch_3"):
        data.load(load("data=cifar10", f"data.root={tmp_path}", storage=tmp_path).data)


def test_augment_crops_a_shifted_window_and_flips():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    torch.manual_seed(0)
    out = data.augment(x, crop_padding=2, flip=True)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    assert not torch.equal(out, x)

