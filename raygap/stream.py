"""Trees of image files too large for memory, streamed through Ray Data to every training worker.

`data.stream` chooses the path (`true`, `false`, or `auto`: streamed when the decoded training images
would take over a quarter of this machine's memory, or when `data.image_size` asks for crops). Both paths
split by `data.carve` and feed the same loop: a streamed split is a `Files` (paths and labels), and its
training batches come from `StreamedBatches`, which has `data.Batches`'s interface.

Layouts: `data=imagenet` is ILSVRC-2012 as most copies lie, `root/train/<wnid>/*.JPEG` and
`root/val/<wnid>/*.JPEG` (the official validation archive is flat; its labels file puts each image in a
class folder, as `README.md` shows); val is the test split, as RobustBench evaluates on it. `data=folder`
with `data.stream=true` is `_folder`'s tree (root/<class>/ or root/train/ + root/test/). The root may be
a local folder or a bucket URI (s3://, gs://); each image is read when it is decoded.

Each epoch is deterministic for a seed: the order is `data.epoch_order` (the in-memory path's own), rank
r of `world` takes every world-th image of it, and each image's random crop and flip are seeded by
(seed, epoch, image). A worker restarted from epoch k's checkpoint therefore replays epoch k+1 exactly.
This departs from Ray Train's `get_dataset_shard`: its `streaming_split` hands blocks to whichever rank
asks first, so which images a rank sees depends on timing and a restarted epoch could not replay; here
each rank streams a dataset of its own fixed shard. Ray Data decodes on CPU tasks beside the trainers
(`data.decoders` at once for each training process, `data.decode_cpus` each) and delivers in order
(`preserve_order`), a bounded number of blocks ahead. A Tune trial that trains in its own process reserves
its decoding CPUs in its placement group (tune.py), and its tasks run there: otherwise trials that took
every CPU would leave their decoding none, and wait for ever. A Ray Train worker's tasks go to any free CPU
of the cluster (Ray Train places its workers in a placement group of its own, with no room to add to).

A damaged image met during an epoch is skipped, not refused: checking every file before training means
decoding the whole of ImageNet once more. Its row stays in the stream as a placeholder (label -1) that
the consumer drops, with a line naming the file, so every rank still takes the same number of steps
(DDP waits for each rank at every step); the epoch's count of skipped images is printed at its end and
is the epochs table's `skipped_images`.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raygap import data, storage
from raygap.errors import UserError

BLOCK_ROWS = 64  # images per Ray Data block: the unit one decoding task takes
RESIZE_RATIO = 0.875  # evaluation resizes the short side to size / 0.875 (256 for 224), then centre-crops


@dataclass
class Files:
    """A streamed split: image paths (local or URIs) and labels; images are decoded when read."""

    paths: np.ndarray  # of str
    y: torch.Tensor  # int64
    size: int  # data.image_size: crops of size x size; 0: images as stored
    shape: tuple  # (C, H, W) of a delivered image

    def __len__(self):
        return len(self.y)

    def subset(self, index: torch.Tensor) -> "Files":
        return Files(self.paths[index.numpy()], self.y[index], self.size, self.shape)

    def decode(self, n: int) -> data.Split:
        """The first n images as a Split, prepared as for evaluation (a resize and a centre crop)."""
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
            images = list(pool.map(lambda path: prepare(read(path), self.size, None, self.shape, path),
                                   self.paths[:n]))
        return data.Split(torch.from_numpy(np.stack(images)), self.y[:n].clone())


def load_dataset(cfg) -> data.Dataset:
    """The data set of `cfg` (the `data` node): streamed (`load`) or in memory (`data.load`)."""
    found = _listed(cfg)
    return load(cfg, found) if streamed(cfg, found) else data.load(cfg)


def batches(split, cfg, t, rank: int, world: int, device: torch.device, decode_group=None):
    """One rank's training batches of `split` under data config `cfg` and training settings `t`: from
    memory (`data.Batches`) or streamed (`StreamedBatches`, for a split of files; `decode_group`: the
    placement group its decoding tasks run in, if any)."""
    settings = dict(batch_size=max(1, t.batch_size // world), rank=rank, world=world, seed=t.seed, device=device,
                    crop_padding=cfg.crop_padding, flip=cfg.flip,
                    channels_last=device.type == "cuda" and t.channels_last)
    if isinstance(split, data.Split):
        return data.Batches(data.place(split, device, cfg.resident), **settings)
    return StreamedBatches(split, decode_cpus=cfg.decode_cpus, decoders=cfg.decoders, decode_group=decode_group,
                           **settings)


def decoding_cpus(cfg, t) -> float:
    """The CPUs that the decoding tasks of a streamed run of data config `cfg` and training settings `t`
    take at once: data.decoders tasks of data.decode_cpus for each training process."""
    return cfg.decode_cpus * cfg.decoders * max(t.workers, 1)


def head(split, n: int) -> data.Split:
    """The first n images of a split (all with n=0), in memory: a streamed split's are decoded for
    evaluation, and only these n are held, however large the data set."""
    n = min(n or len(split), len(split))
    return data.Split(split.x[:n], split.y[:n]) if isinstance(split, data.Split) else split.decode(n)


def _listed(cfg) -> tuple | None:
    """`listing(cfg)` where the data may stream (a tree with data.stream not false), else None."""
    return listing(cfg) if cfg.name in data.STREAMABLE and str(cfg.stream).lower() != "false" else None


def streamed(cfg, found: tuple | None = None) -> bool:
    """Whether the data set `cfg` is streamed (the module's docstring says when `auto` does); `found`: the
    tree's listing where the caller has it (`_listed`), so that it is listed once."""
    if cfg.name not in data.STREAMABLE or str(cfg.stream).lower() == "false":
        return False
    if str(cfg.stream).lower() == "true" or cfg.name == "imagenet" or cfg.image_size:
        return True
    train = (found or listing(cfg))[0]
    first = prepare(read(train[0][0]), 0, None, None, train[0][0])
    return len(train) * first.nbytes > _memory() / 4


def check_tree(cfg) -> bool:
    """Whether `cfg` streams. A tree that may stream is listed now, before any Ray process starts, so that
    its refusals (a missing part, a stray file, an empty class, classes that differ) are one line and
    exit 2 rather than a failed trial."""
    return streamed(cfg, _listed(cfg))


def _memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")



def load(cfg, found: tuple) -> data.Dataset:
    """The streamed data set of `cfg` from its listing `found`: its splits as Files, carved as the
    in-memory path carves."""
    if not cfg.mean:  # config.validate refuses it where the config says the data streams; here, auto chose to
        raise UserError(f"data.mean {data.MEAN_REQUIRED} ({cfg.root} is large enough to stream)")
    train, test, classes = found
    shape = (3, cfg.image_size, cfg.image_size) if cfg.image_size else prepare(read(train[0][0]), 0, None, None,
                                                                                train[0][0]).shape
    files = _files(train, cfg.image_size, shape)
    keep, held, carved = data.carve(cfg, len(files), official_test=test is not None)
    if test is None:
        test_files = files.subset(carved)
    else:  # a tree's official test split lies sorted by class: eval.n takes a seeded random n of it
        test_files = _files(test, cfg.image_size, shape)
        test_files = test_files.subset(torch.randperm(len(test_files),
                                                      generator=torch.Generator().manual_seed(cfg.split_seed)))
    return data.assemble(cfg, files.subset(keep), files.subset(held), test_files, len(classes))


def _files(samples: list, size: int, shape: tuple) -> Files:
    paths = np.array([path for path, _ in samples], dtype=object)
    return Files(paths, torch.tensor([label for _, label in samples], dtype=torch.int64), size, shape)


def listing(cfg) -> tuple[list, list | None, list]:
    """(training samples, test samples or None, classes) of the tree at data.root; samples are
    (path, class index). ImageNet needs train/ and val/; a folder is read as `data._folder` reads it."""
    root = cfg.root
    if not _is_dir(root):
        raise UserError(f"data.root '{root}' is not a folder that can be read; point it at "
                        f"{'ILSVRC-2012 (train/<wnid>/, val/<wnid>/)' if cfg.name == 'imagenet' else 'an image tree'}")
    if cfg.name == "imagenet":
        for part in ("train", "val"):
            if not _is_dir(storage.join(root, part)):
                raise UserError(f"{storage.join(root, part)} is missing: ImageNet is read as "
                                f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (README: 'ImageNet')")
        parts = [storage.join(root, "train"), storage.join(root, "val")]
    else:
        parts = data.tree_parts(root, _is_dir, storage.join)
    scanned = [_scan(part) for part in parts]
    data.same_classes(parts, [classes for classes, _ in scanned])
    return scanned[0][1], scanned[1][1] if len(scanned) == 2 else None, scanned[0][0]


def _is_dir(path: str) -> bool:
    if not storage.is_uri(path):
        return Path(path).is_dir() and os.access(path, os.R_OK | os.X_OK)
    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def _scan(part: str) -> tuple[list, list]:
    """`data._scan` (sorted classes, samples, with its refusals of stray files and empty classes) of a
    local tree, or of a tree in a bucket, listed in one recursive request."""
    if not storage.is_uri(part):
        classes, samples = data._scan(Path(part))
        return classes, [(str(path), label) for path, label in samples]
    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(part)
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
        relative = info.path[len(inner.rstrip("/")) + 1:]
        name, _, rest = relative.partition("/")
        if name.startswith("."):
            continue
        if info.type == pafs.FileType.Directory and not rest:
            found.setdefault(name, [])
        elif info.type == pafs.FileType.File and rest and not Path(rest).name.startswith("."):
            found.setdefault(name, []).append(storage.join(part, relative))
    return data.classified(part, found)


class Damaged(UserError):
    """An image file that was read but cannot be decoded."""


def read(path: str):
    """The image at `path` (a local file or a URI), decoded by PIL. A file that cannot be read raises as
    storage raises (a bucket's transient errors retried first): only a file that was read and does not
    decode is `Damaged`, which an epoch skips."""
    from PIL import Image

    content = storage.read_bytes(path)
    try:
        with Image.open(io.BytesIO(content)) as image:
            return image.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError or ValueError on a damaged file
        raise Damaged(f"cannot decode image {path}: {err}; replace or remove it") from None


def prepare(image, size: int, rng: np.random.Generator | None, shape: tuple | None, path: str,
            flip: bool = False) -> np.ndarray:
    """A decoded image as C x H x W uint8. size 0: as stored. Training (rng given): torchvision's
    RandomResizedCrop (scale 0.08-1, aspect 3/4-4/3) to size x size and a flip; evaluation (rng None):
    the short side resized to size / 0.875 and a centre crop. `shape`: the shape every image must have."""
    from PIL import Image

    if size and rng is not None:
        left, top, width, height = _random_resized_crop(image.size, rng)
        image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + width, top + height))
    elif size:
        short = round(size / RESIZE_RATIO)
        w, h = image.size
        scale = short / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image).transpose(2, 0, 1)
    if flip and rng is not None and rng.random() < 0.5:
        x = x[:, :, ::-1]
    if shape is not None and x.shape != tuple(shape):
        raise UserError(f"{path} is {x.shape[2]}x{x.shape[1]}, the other images {shape[2]}x{shape[1]}; set "
                        f"data.image_size to crop them to one size, or resize the tree")
    return np.ascontiguousarray(x)


def _random_resized_crop(size: tuple, rng: np.random.Generator) -> tuple:
    """torchvision's RandomResizedCrop.get_params with scale (0.08, 1) and ratio (3/4, 4/3), on `rng`."""
    width, height = size
    area = width * height
    log_ratio = np.log([3 / 4, 4 / 3])
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(*log_ratio))
        w, h = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    ratio = width / height  # the fallback: a centre crop of the whole image, its aspect clamped to 3/4-4/3
    w, h = (width, round(width / (3 / 4))) if ratio < 3 / 4 else (round(height * 4 / 3), height) \
        if ratio > 4 / 3 else (width, height)
    return (width - w) // 2, (height - h) // 2, w, h


def decode_block(block: dict, size: int, shape: tuple, seed: int, epoch: int, flip: bool) -> dict:
    """Ray Data's map over one block, whose rows hold lists of paths, indices and labels: the decoded,
    augmented images, a row each. A damaged image becomes a zero placeholder with label -1 (see the
    module's docstring)."""
    paths = [path for row in block["path"] for path in row]
    indices, labels = np.concatenate(block["index"]), np.concatenate(block["label"])
    images = []
    for row, (path, index) in enumerate(zip(paths, indices)):
        rng = np.random.default_rng((seed, epoch, int(index))) if size else None
        try:
            images.append(prepare(read(path), size, rng, shape, path, flip))
        except Damaged as err:
            print(f"[data] skipped: {err}", file=sys.stderr, flush=True)
            images.append(np.zeros(shape, np.uint8))
            labels[row] = -1
    return {"x": np.stack(images), "y": labels, "index": indices}


@dataclass
class StreamedBatches(data.Batches):
    """One rank's training batches of a streamed split (`split` is a Files), as `data.Batches` gives an
    in-memory split's: the same epoch lengths, steps and shards."""

    decode_cpus: float = 0.5
    decoders: int = 1
    decode_group: object = None  # a ray.util.placement_group.PlacementGroup

    def dataset(self, epoch: int):
        """The Ray Data dataset of this rank's `epoch`: decoded and augmented in order."""
        import ray.data  # Ray is connected: runner.execute connects for a streamed run in this process
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the epoch's order is the seeded one
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # three lines per epoch and rank otherwise
        shard = self.shard(epoch).numpy()
        # a row per block of BLOCK_ROWS images, not per image: from_items builds its blocks row by row in
        # Python (ImageNet's 160,000 images a rank of 8 took 9 s an epoch as rows of one image each)
        rows = [{"path": self.split.paths[chunk].tolist(), "index": chunk.tolist(),
                 "label": self.split.y[chunk].tolist()}
                for chunk in np.array_split(shard, max(1, -(-len(shard) // BLOCK_ROWS)))]
        augmented = self.flip and bool(self.split.size)  # the crop and flip of a resized image: on the CPU
        # Ray Data spreads its tasks over the cluster's free CPUs unless told where: in a Tune trial that
        # reserved CPUs for them (tune.py), they run there, so that concurrent trials cannot take them all.
        # Ray 2.60 deprecates ray_remote_args, with no named parameter that places tasks yet.
        placed = {} if self.decode_group is None else {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.decode_group)}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            # from_items puts the blocks from this process; from_arrow would ask a free CPU outside the
            # placement group for a task per block, and wait for ever when the trials hold them all
            return ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                decode_block, batch_format="numpy", batch_size=None, num_cpus=self.decode_cpus,
                compute=ray.data.TaskPoolStrategy(size=self.decoders), **placed,
                fn_kwargs={"size": self.split.size, "shape": self.split.shape, "seed": self.seed, "epoch": epoch,
                           "flip": augmented})

    def epoch(self, epoch: int):
        self.skipped = skipped = 0
        # on the CPU: inside Ray Train, Ray Data would otherwise collate onto the worker's assigned GPU, even one
        # that is only a resource; the uint8 batch is moved to self.device below
        for batch in self.dataset(epoch).iter_torch_batches(batch_size=self.batch_size, drop_last=False,
                                                            device="cpu"):
            x, y = batch["x"], batch["y"]
            damaged = y < 0
            if damaged.any():
                skipped += int(damaged.sum())
                for index in batch["index"][damaged].tolist():
                    sys.stdout.write(f"[data] skipped {self.split.paths[index]}: it cannot be decoded\n")
                x, y = x[~damaged], y[~damaged]
                if not len(y):
                    raise UserError(f"every image of a batch of epoch {epoch + 1} is damaged (named above); "
                                    f"check the tree at {self.split.paths[0]}")
            x = data.to_float(x.to(self.device, non_blocking=True))
            if not self.split.size:  # images as stored: padded crops and flips on the device, as in memory
                x = data.augment(x, self.crop_padding, self.flip)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)
        self.skipped = skipped
        if skipped:
            sys.stdout.write(f"[data] epoch {epoch + 1}: rank {self.rank} skipped {skipped} damaged images "
                             f"(named above)\n")
