"""Data sets as uint8 NCHW tensors, seeded train/validation/test splits, and device-resident batching.

Every loader returns uint8 images; they become floats in [0, 1] on the training device, batch by
batch. The validation split is carved from the training data with `data.split_seed` (none with
`data.val_fraction=0`: the per-epoch figures are then on training images); the test split
is the data set's official one where it has one, else carved first, and is never used to choose anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raygap.errors import UserError

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "tiny_imagenet", "folder", "npz",
            "imagenet")
STREAMABLE = ("folder", "imagenet")  # trees of image files, which data.stream may stream (raygap/stream.py)
MEAN_REQUIRED = ("and data.std are required for a streamed tree (computing them reads every image): give "
                 "them, e.g. ImageNet's data.mean=[0.485,0.456,0.406] data.std=[0.229,0.224,0.225]")


@dataclass
class Split:
    x: torch.Tensor  # uint8, N x C x H x W
    y: torch.Tensor  # int64, N

    def __len__(self):
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    @property
    def shape(self) -> tuple:
        return tuple(self.x.shape[1:])


@dataclass
class Dataset:
    train: Split  # or stream.Files: a streamed data set's splits are files, decoded as they are read
    val: Split
    test: Split
    num_classes: int
    mean: list
    std: list

    @property
    def in_shape(self) -> tuple:
        return self.train.shape


def _missing(name: str, where: Path, files: str) -> UserError:
    return UserError(f"data set '{name}' not found at {where} (expected {files}); "
                     f"set data.root to where it lies, or data.download=true to fetch it")


def _digits(cfg):
    from sklearn.datasets import load_digits

    digits = load_digits()  # shipped inside scikit-learn: works offline
    x = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    return (x, digits.target), None


def _mnist(cfg, cls_name):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root = Path(cfg.root)
    try:
        parts = [cls(str(root), train=train, download=cfg.download) for train in (True, False)]
    except RuntimeError as err:
        if "not found" in str(err).lower():
            raise _missing(cfg.name, root / cls_name / "raw", "the four idx files") from None
        raise UserError(f"cannot read {cfg.name} under {root}: {err}") from None
    return [(p.data.numpy()[:, None], p.targets.numpy()) for p in parts]


def _cifar(cfg, classes):
    import torchvision.datasets as tvd

    folder, files, label_key, cls = {
        10: ("cifar-10-batches-py", ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]), "labels", tvd.CIFAR10),
        100: ("cifar-100-python", (["train"], ["test"]), "fine_labels", tvd.CIFAR100),
    }[classes]
    root = Path(cfg.root)
    if not (root / folder).is_dir() and cfg.download:
        cls(str(root), download=True)
    out = []
    for names in files:
        xs, ys = [], []
        for name in names:
            path = root / folder / name
            if not path.is_file():
                raise _missing(cfg.name, root / folder, ", ".join(sum(files, [])))
            try:
                with open(path, "rb") as fh:
                    batch = pickle.load(fh, encoding="latin1")
                xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[label_key]))
            except Exception as err:
                raise UserError(f"cannot read {path}: {err}; delete it and fetch the data again") from None
        out.append((np.concatenate(xs), np.concatenate(ys)))
    return out


def _svhn(cfg):
    import scipy.io
    import torchvision.datasets as tvd

    root = Path(cfg.root)
    out = []
    for split in ("train", "test"):
        path = root / f"{split}_32x32.mat"
        if not path.is_file() and cfg.download:
            tvd.SVHN(str(root), split=split, download=True)
        if not path.is_file():
            raise _missing("svhn", root, "train_32x32.mat and test_32x32.mat")
        try:
            mat = scipy.io.loadmat(path)
        except Exception as err:
            raise UserError(f"cannot read {path}: {err}") from None
        y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
        out.append((np.transpose(mat["X"], (3, 2, 0, 1)), y))
    return out


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _folder(cfg):
    """An ImageFolder tree: root/<class>/<image>; root/train/... (+ root/test/...) where there is a train/.

    The decoded images are cached as one uint8 file per tree part (see `_cached_tree`)."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise UserError(f"data.root '{root}' is not a folder; point it at an ImageFolder tree (root/<class>/<image>)")
    parts = tree_parts(root, Path.is_dir, lambda folder, name: folder / name)
    cache_dir = _cache_dir(root)
    out = [_cached_tree(part, cache_dir) for part in parts]
    same_classes(parts, [classes for _, _, classes in out])
    if len({x.shape[1:] for x, _, _ in out}) > 1:
        raise UserError(f"the images of {parts[0]} and {parts[1]} have different sizes; resize them to one size")
    pairs = [(x, y) for x, y, _ in out]
    return pairs if len(pairs) == 2 else (pairs[0], None)


def tree_parts(root, is_dir, join) -> list:
    """An image tree's parts: root/train (and root/test where there is one) where there is a train/, else
    root itself. `is_dir` and `join` are a local folder's or a bucket's (stream.py)."""
    if not is_dir(join(root, "train")):
        return [root]
    return [join(root, "train")] + ([join(root, "test")] if is_dir(join(root, "test")) else [])


def same_classes(parts: list, classes: list) -> None:
    """Refuse a tree whose two parts (train and test) have different class folders, naming one."""
    if len(classes) == 2 and classes[0] != classes[1]:
        differ = sorted(set(classes[0]) ^ set(classes[1]))
        raise UserError(f"{parts[1]} and {parts[0]} have different class folders ({differ[0]} is in only one of "
                        f"them); give both the same classes")


def _scan(part: Path) -> tuple[list, list]:
    """(sorted class names, [(image path, class index)]) of one tree (`classified`'s refusals; a folder that
    cannot be read is named, where os.walk alone would pass it by as empty)."""

    def unreadable(err: OSError):
        raise UserError(f"cannot read {err.filename}: {err.strerror.lower()}; give raygap read access to "
                        f"{part}") from None

    try:
        classes = [d.name for d in part.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError as err:
        unreadable(err)
    walked = {name: os.walk(part / name, onerror=unreadable) for name in classes}  # no stat per file
    return classified(part, {name: [Path(folder) / file for folder, _, names in walk
                                    for file in names if not file.startswith(".")] for name, walk in walked.items()})


def classified(part, found: dict) -> tuple[list, list]:
    """(sorted class names, [(image path, class index)]) of a tree's {class: [file]}; a stray file or an
    empty class is refused by name, since ImageFolder would skip the one and fail vaguely on the other."""
    if not found:
        raise UserError(f"{part} has no class folders; an ImageFolder tree is {part}/<class>/<image>")
    classes, samples = sorted(found), []
    for index, name in enumerate(classes):
        files = sorted(found[name])
        stray = [p for p in files if Path(p).suffix.lower() not in IMAGE_SUFFIXES]
        if stray:
            raise UserError(f"{stray[0]} is not an image ({', '.join(IMAGE_SUFFIXES)}); move it out of {part}")
        if not files:
            raise UserError(f"class folder {part}/{name} has no images; add its images or remove the folder")
        samples += [(p, index) for p in files]
    return classes, samples


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L" if img.mode in ("L", "1", "I;16") else "RGB"))
    except Exception as err:  # PIL raises OSError, SyntaxError or ValueError on a damaged file
        raise UserError(f"cannot decode image {path}: {err}; replace or remove it") from None


def _cached_tree(part: Path, cache_dir: Path, scanned: tuple | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """(images N x C x H x W uint8, labels, classes) of one tree, decoded once and then read from a cache.

    `scanned` is (classes, [(image path, class index)]) for a tree not laid out as an ImageFolder
    (default: `_scan(part)`). The cache is keyed by the tree's contents (every file's path, size and
    modification time, and the labels where they do not follow from the path), so a changed tree is
    decoded again; it is written whole (a temporary file, then a rename) into `cache_dir`, and the
    tree's older caches are removed."""
    classes, samples = scanned or _scan(part)
    stats = [p.stat() for p, _ in samples]
    listing = [(str(p.relative_to(part)), st.st_size, st.st_mtime_ns) for (p, _), st in zip(samples, stats)]
    tree = f"{part.name}-{_digest(str(part.resolve()))}"  # one tree's caches, old and new
    key = [classes, listing] + ([[label for _, label in samples]] if scanned else [])
    cache = cache_dir / f"{tree}-{_digest(json.dumps(key))}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as saved:
                return saved["x"], saved["y"], saved["classes"].tolist()
        except Exception as err:
            print(f"the image cache {cache} is unreadable ({err}); decoding the tree again", flush=True)
    stale = sorted(cache.parent.glob(f"{tree}-*.npz"))
    print(f"decoding {len(samples)} images of {part}{' (the tree changed since its cache)' if stale else ''}; "
          f"they are cached in {cache.parent}", flush=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
        images = list(pool.map(_decode, [p for p, _ in samples], chunksize=256))
    shapes = {}
    for (path, _), image in zip(samples, images):
        shapes.setdefault(image.shape, path)
    if len(shapes) > 1:
        (a, first), (b, other) = list(shapes.items())[:2]
        raise UserError(f"images under {part} have different sizes: {first} is {a}, {other} is {b}; "
                        f"resize them to one size")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    x, y = np.ascontiguousarray(x), np.asarray([label for _, label in samples], dtype=np.int64)
    descriptor, temporary = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as fh:
            np.savez(fh, x=x, y=y, classes=np.asarray(classes))
        os.chmod(temporary, 0o644)  # mkstemp makes it private
        os.replace(temporary, cache)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for old in stale:
        old.unlink(missing_ok=True)
    return x, y, classes


TINY_IMAGENET = ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")  # URL, MD5


def _tiny_imagenet(cfg):
    """The official Tiny-ImageNet archive, unzipped: tiny-imagenet-200/ with wnids.txt (the 200 classes),
    train/<wnid>/images/*.JPEG and val/images/*.JPEG labelled by val/val_annotations.txt. The val images
    are the test split, as the AFD paper reports on them (test/ has no labels). Classes are the sorted
    wnids, the official code's order. data.root is that folder or the one holding it (or its zip)."""
    root = _tiny_root(cfg)
    wnids_file = root / "wnids.txt"
    wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    classes = sorted(set(wnids))
    index = {wnid: i for i, wnid in enumerate(classes)}
    train_samples = []
    for folder in sorted(p for p in (root / "train").iterdir() if p.is_dir()):
        if folder.name not in index:
            raise UserError(f"{folder} is not a class of {wnids_file}; remove the folder or add '{folder.name}' "
                            f"to wnids.txt")
        train_samples += [(path, index[folder.name]) for path in _jpegs(folder / "images")]
    missing = sorted(set(classes) - {p.name for p in (root / "train").iterdir()})
    if missing:
        raise UserError(f"{root / 'train'} has no folder for {missing[0]} of {wnids_file}; the archive is incomplete")
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise UserError(f"{annotations} is missing: it labels the val images; unzip the whole archive again")
    labels = {}
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise UserError(f"{annotations} line {number} names no class of {wnids_file}: '{line.strip()}'")
        labels[fields[0]] = index[fields[1]]
    val_samples = []
    for path in _jpegs(root / "val" / "images"):
        if path.name not in labels:
            raise UserError(f"{path} has no line in {annotations}; remove the image or annotate it")
        val_samples.append((path, labels[path.name]))
    cache_dir = _cache_dir(root)
    train = _cached_tree(root / "train", cache_dir, (classes, train_samples))
    val = _cached_tree(root / "val", cache_dir, (classes, val_samples))
    return (train[0], train[1]), (val[0], val[1])


def _jpegs(folder: Path) -> list:
    if not folder.is_dir():
        raise UserError(f"{folder} is missing; Tiny-ImageNet keeps each class's images in <class>/images/")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _tiny_root(cfg) -> Path:
    """The unzipped archive's folder under data.root: found, extracted from the zip lying there, or (with
    data.download=true) downloaded; the zip's MD5 is checked before anything is extracted."""
    import zipfile

    given = Path(cfg.root)
    for candidate in (given, given / "tiny-imagenet-200"):
        if (candidate / "wnids.txt").is_file():
            return candidate
    url, md5 = TINY_IMAGENET
    archive = given / "tiny-imagenet-200.zip"
    if not archive.is_file() and cfg.download:
        from torchvision.datasets.utils import download_url

        try:
            download_url(url, str(given), archive.name)
        except OSError as err:
            raise UserError(f"cannot download {url} ({err}); offline, put tiny-imagenet-200.zip or its unzipped "
                            f"folder in {given}") from None
    if archive.is_file():
        with open(archive, "rb") as fh:
            digest = hashlib.file_digest(fh, "md5").hexdigest()
        if digest != md5:
            raise UserError(f"{archive} is not the official archive (MD5 {digest}, expected {md5}); delete it and "
                            f"fetch it again from {url}")
        print(f"extracting {archive} into {given}", flush=True)
        partial = Path(tempfile.mkdtemp(dir=given, prefix=".tiny-imagenet-200-"))  # whole or not at all
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(partial)
            os.replace(partial / "tiny-imagenet-200", given / "tiny-imagenet-200")
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return given / "tiny-imagenet-200"
    if (given / "cifar-10-batches-py").is_dir() or (given / "cifar-100-python").is_dir():
        raise UserError(f"data.root {given} holds CIFAR, not Tiny-ImageNet; use data=cifar10 or data=cifar100, "
                        f"or point data.root at the unzipped tiny-imagenet-200/")
    if given.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in given.iterdir()):
        raise UserError(f"data.root {given} is not the Tiny-ImageNet archive's layout (wnids.txt, "
                        f"train/<wnid>/images/, val/val_annotations.txt); an ImageFolder tree is data=folder")
    raise UserError(f"Tiny-ImageNet not found at {given} (expected tiny-imagenet-200/ with wnids.txt, or "
                    f"tiny-imagenet-200.zip); download {url} there and unzip it, or set data.download=true")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_dir(root: Path) -> Path:
    """`.raygap_cache/` inside the tree (hidden folders are not classes), or ~/.cache/raygap when the
    tree is read-only."""
    beside = root / ".raygap_cache"
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    home = Path.home() / ".cache" / "raygap"
    home.mkdir(parents=True, exist_ok=True)
    return home


def _npz(cfg):
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"data.path {path} does not exist; give an .npz with arrays x (uint8 images) and y (labels)")
    try:
        arrays = dict(np.load(path))
    except Exception as err:
        raise UserError(f"cannot read {path} as .npz: {err}") from None
    if "x" not in arrays or "y" not in arrays:
        raise UserError(f"{path} must hold arrays 'x' and 'y' (it has: {', '.join(arrays) or 'none'})")

    def images(x, key):
        if x.dtype != np.uint8:
            raise UserError(f"{path}: '{key}' is {x.dtype}; store images as uint8 in 0..255")
        if x.ndim == 3:
            return x[:, None]
        if x.ndim == 4 and x.shape[1] in (1, 3):
            return x
        if x.ndim == 4 and x.shape[3] in (1, 3):
            return x.transpose(0, 3, 1, 2)
        raise UserError(f"{path}: '{key}' has shape {x.shape}; expected N x H x W, NCHW or NHWC with 1 or 3 channels")

    train = (images(arrays["x"], "x"), arrays["y"])
    test = (images(arrays["x_test"], "x_test"), arrays["y_test"]) if "x_test" in arrays else None
    return train, test


LOADERS = {
    "digits": _digits,
    "mnist": lambda cfg: _mnist(cfg, "MNIST"),
    "fashion_mnist": lambda cfg: _mnist(cfg, "FashionMNIST"),
    "cifar10": lambda cfg: _cifar(cfg, 10),
    "cifar100": lambda cfg: _cifar(cfg, 100),
    "svhn": _svhn,
    "tiny_imagenet": _tiny_imagenet,
    "folder": _folder,
    "npz": _npz,
    "imagenet": None,  # always streamed: stream.load_dataset
}


def _split(n: int, fraction: float, generator) -> tuple:
    perm = torch.randperm(n, generator=generator)
    cut = int(round(n * fraction))
    return perm[cut:], perm[:cut]


def carve(cfg, n: int, official_test: bool) -> tuple:
    """(train, validation, test) indices into a data set's n training images, seeded by data.split_seed:
    the test split carved first where there is no official one (test None otherwise), then the
    validation split; data.train_n keeps a seeded random subset of what is left for training. The
    in-memory and the streamed paths both split by it, so they hold the same images."""
    generator = torch.Generator().manual_seed(cfg.split_seed)
    everything, test = torch.arange(n), None
    if not official_test:
        keep, test = _split(n, cfg.test_fraction, generator)
        everything = keep
    keep, held = _split(len(everything), cfg.val_fraction, generator)
    if cfg.train_n:
        keep = keep[:cfg.train_n]  # keep is a seeded permutation: its head is a random subset
    return everything[keep], everything[held], test


def load(cfg) -> Dataset:
    """Load `cfg` (the `data` config node) with its seeded splits into memory, on the CPU (a streamed tree
    is `stream.load_dataset`'s)."""
    if cfg.name not in LOADERS:
        raise UserError(f"unknown data set '{cfg.name}'; choose one of: {', '.join(DATASETS)}")
    train, test = LOADERS[cfg.name](cfg)
    x = torch.from_numpy(np.ascontiguousarray(train[0]))
    y = torch.from_numpy(np.asarray(train[1], dtype=np.int64))
    if len(x) != len(y):
        raise UserError(f"data set '{cfg.name}' has {len(x)} images but {len(y)} labels")
    keep, held, carved = carve(cfg, len(y), official_test=test is not None)
    if test is None:
        test_split = Split(x[carved], y[carved])
    else:
        test_split = Split(torch.from_numpy(np.ascontiguousarray(test[0])),
                           torch.from_numpy(np.asarray(test[1], dtype=np.int64)))
        if test_split.x.shape[1:] != x.shape[1:]:
            raise UserError(f"data set '{cfg.name}': train images are {tuple(x.shape[1:])}, test images "
                            f"{tuple(test_split.x.shape[1:])}")
    train_split = Split(x[keep], y[keep])
    num_classes = int(max(y.max(), test_split.y.max())) + 1
    return assemble(cfg, train_split, Split(x[held], y[held]), test_split, num_classes)


def assemble(cfg, train, val, test, num_classes: int) -> "Dataset":
    """The Dataset of three splits (in memory or streamed), its sizes checked and its normalisation set."""
    # val_fraction 0 (a paper protocol: every training image is trained on): the per-epoch figures are
    # measured on training images, for monitoring; config.validate lets nothing be chosen on them
    val = val if len(val) else train
    if min(len(train), len(val), len(test)) == 0:
        raise UserError(f"data set '{cfg.name}' is too small for its splits "
                        f"(train {len(train)}, val {len(val)}, test {len(test)})")
    mean, std = list(cfg.mean), list(cfg.std)
    if not mean:  # a streamed data set is refused without them (config.validate): this reads every image
        floats = train.x.float() / 255
        mean, std = floats.mean((0, 2, 3)).tolist(), floats.std((0, 2, 3)).clamp_min(1e-3).tolist()
    return Dataset(train, val, test, num_classes, mean, std)


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255)


def augment(x: torch.Tensor, crop_padding: int, flip: bool, generator=None) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, on whatever device `x` is."""
    n, _, h, w = x.shape
    if crop_padding:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=x.device, generator=generator)
        rows = dy + torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = dx + torch.arange(w, device=x.device).view(1, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, channel, rows, cols]  # one gather; indices broadcast to N x C x H x W
    if flip:
        mask = torch.rand(n, 1, 1, 1, device=x.device, generator=generator) < 0.5
        x = torch.where(mask, x.flip(3), x)
    return x


def place(split: Split, device: torch.device, resident: str) -> Split:
    """The whole split on the training device when it fits (CIFAR-10 takes 150 MB), else in host memory."""
    if resident == "host" or device.type == "cpu":
        return split
    if resident == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        if split.x.numel() > 0.25 * free:
            return Split(split.x.pin_memory(), split.y.pin_memory())
    return split.to(device)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of a split's n images in `epoch`: a permutation of their own for each (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@dataclass
class Batches:
    """One rank's training batches of `split`: floats in [0, 1] on `device`, augmented.

    Each epoch shuffles the whole split with a seed of its own (seed, epoch), so a run resumed from
    epoch k's checkpoint replays epoch k+1 exactly, and gives every rank an equal shard of it (the
    remainder of a division by `world` is left out), so DDP ranks stay in step.
    """

    split: Split
    batch_size: int  # per rank
    rank: int
    world: int
    seed: int
    device: torch.device
    crop_padding: int = 0
    flip: bool = False
    channels_last: bool = False

    def __post_init__(self):
        self.epoch_len = len(self.split) - len(self.split) % self.world  # images per epoch, all ranks
        self.skipped = 0  # this rank's images of the last epoch skipped as damaged (a streamed split's only)
        self.steps = math.ceil(self.epoch_len // self.world / self.batch_size)  # batches per epoch and rank

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's images of `epoch`, in the order it trains on them (indices into the split)."""
        return epoch_order(len(self.split), self.seed, epoch)[:self.epoch_len][self.rank::self.world]

    def epoch(self, epoch: int):
        shard = self.shard(epoch)
        for begin in range(0, len(shard), self.batch_size):
            index = shard[begin:begin + self.batch_size]
            x = to_float(self.split.x[index].to(self.device, non_blocking=True))
            y = self.split.y[index].to(self.device, non_blocking=True)
            x = augment(x, self.crop_padding, self.flip)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
