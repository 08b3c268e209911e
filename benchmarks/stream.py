"""What the streamed pipeline (raygap/stream.py) delivers per CPU core, what a GPU's training step consumes,
and from the two the CPU cores that feed one GPU in an ImageNet search.

    python benchmarks/stream.py [--root DIR] [--images 2000] [--size 224] [--gpu-mfu 0.257]
                                [--model resnet18_imagenet]

--root: an image tree (root/<class>/*.JPEG, such as ImageNet's train/); without it a tree of --images
JPEGs at ImageNet's typical size (500x375, quality 90) is made from the repository's CIFAR-10 sample,
upscaled: its files are smoother than photographs and decode a little faster, so the cores per GPU
printed is a lower bound. Measured on this machine: decoding and cropping in one process (one core), the
whole Ray Data pipeline into one consumer with every core decoding, and the consumer's peak private memory
against the decoded size of the images it received. The GPU side is not measured here (no GPU): a training
step's consumption is its FLOPs per image (PyTorch's counter, the method's passes) at --gpu-mfu of an
H100's bf16 peak; 0.257 is what the compiled ResNet-18 step reached there (benchmarks/README.md, GPU table).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import config, runner, stream  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "cifar10_jpeg_sample" / "train"
H100_BF16 = 989e12


def make_tree(folder: Path, images: int) -> Path:
    from PIL import Image

    sources = sorted(SAMPLE.rglob("*.jpg"))
    for i in range(images):
        source = sources[i % len(sources)]
        target = folder / source.parent.name / f"{i:06d}.JPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).convert("RGB").resize((500, 375), Image.BICUBIC).save(target, quality=90)
    return folder


def one_core(files: stream.Files, train: bool, seconds: float = 10.0) -> float:
    """Images per second that this process decodes and crops, one image after another."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        path = files.paths[done % len(files)]
        rng = np.random.default_rng(done) if train else None
        stream.prepare(stream.read(path), files.size, rng, files.shape, path, flip=train)
        done += 1
    return done / (time.perf_counter() - started)


def private_memory() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon:"))) * 1024


def pipeline(files: stream.Files) -> tuple[float, int]:
    """(images per second delivered into this process by Ray Data, every core decoding; peak private memory)."""
    import torch

    batches = stream.StreamedBatches(files, 128, 0, 1, 0, torch.device("cpu"), flip=True, decode_cpus=1.0,
                                     decoders=os.cpu_count())
    sum(len(y) for _, y in stream.StreamedBatches(files.subset(torch.arange(256)), 128, 0, 1, 0,
                                                  torch.device("cpu")).epoch(0))  # workers started and warm
    images, peak, started = 0, private_memory(), time.perf_counter()
    for _, y in batches.epoch(0):
        images, peak = images + len(y), max(peak, private_memory())
    return images / (time.perf_counter() - started), peak


def epoch_setup(images: int = 1_281_167, world: int = 8) -> float:
    """Seconds one rank spends building its epoch's Ray Data dataset (the shard's blocks put into the
    object store) for ImageNet's training images over `world` ranks; the files need not exist."""
    import numpy as np
    import torch

    paths = np.array([f"/imagenet/train/n{i % 1000:08d}/{i}.JPEG" for i in range(images)], dtype=object)
    files = stream.Files(paths, torch.zeros(images, dtype=torch.int64), 224, (3, 224, 224))
    batches = stream.StreamedBatches(files, 256, 0, world, 0, torch.device("cpu"))
    started = time.perf_counter()
    batches.dataset(0)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--gpu-mfu", type=float, default=0.257)
    parser.add_argument("--model", default="resnet18_imagenet", choices=["resnet18_imagenet", "resnet50_imagenet"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.root) if args.root else make_tree(Path(scratch) / "tree", args.images)
        cfg = config.load(["data=folder", f"data.root={root}", "data.stream=true", f"data.image_size={args.size}",
                           "data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]", "data.val_fraction=0",
                           "train.keep=last", f"model={args.model}", "method=afd", "attack.steps=3"])
        dataset = stream.load_dataset(cfg.data)
        files = dataset.train
        cores = os.cpu_count() or 1
        train_rate, eval_rate = one_core(files, True), one_core(files, False)
        runner.connect()
        delivered, peak = pipeline(files)
        setup = epoch_setup()
        decoded_mb = len(files) * 3 * args.size ** 2 / 2 ** 20

    from raygap.methods import METHODS, params_of
    from raygap.models import build_model, forward_flops

    model = build_model(args.model, (3, args.size, args.size), 1000, [0.5] * 3, [0.5] * 3)
    passes = METHODS["afd"](model, params_of(cfg.method), None).passes(cfg.attack.steps)
    flops = forward_flops(model, (3, args.size, args.size)) * passes
    consumed = args.gpu_mfu * H100_BF16 / flops
    print(f"{len(files)} images of {root if args.root else 'the CIFAR-10 sample upscaled to 500x375'}, "
          f"crops of {args.size}; {cores} cores\n")
    print("| measure | value |\n|---|---|")
    print(f"| decode + random resized crop + flip, one core | {train_rate:,.0f} images/s |")
    print(f"| decode + resize + centre crop (evaluation), one core | {eval_rate:,.0f} images/s |")
    print(f"| Ray Data into one consumer, {cores} cores decoding | {delivered:,.0f} images/s "
          f"({delivered / cores:,.0f} per core) |")
    print(f"| consumer's peak private memory / decoded size of its images | {peak / 2 ** 20:,.0f} MB / "
          f"{decoded_mb:,.0f} MB |")
    print(f"| building one rank's epoch dataset, ImageNet's 1.28 M images over 8 ranks | {setup:.1f} s |")
    print(f"| AFD PGD-{cfg.attack.steps} step, {args.model} at {args.size}: FLOPs per image | "
          f"{flops / 1e9:,.1f} GFLOP ({passes} forward-equivalents) |")
    print(f"| images/s that step consumes on one H100 at {args.gpu_mfu:.1%} MFU (bf16) | {consumed:,.0f} |")
    print(f"| CPU cores that feed one such GPU (at the pipeline's rate per core) | "
          f"{consumed / (delivered / cores):,.0f} |")


if __name__ == "__main__":
    main()
