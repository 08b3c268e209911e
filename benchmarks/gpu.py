"""GPU throughput of PGD-10 adversarial training: images/s and model FLOP utilisation per setting.

    python benchmarks/gpu.py [--models resnet18,wrn34_10] [--batches 128,512] [--steps 30] [--device cuda]

CIFAR-10-shaped random data resident on the GPU; `raygap.loop.train_step` of vAFT with PGD-10, the
step every trial runs, at the trials' batch (128) and a larger one. Settings, side by side in one run,
each adding one thing to the one before: fp32 (convolutions in TF32, PyTorch's default), bf16
autocast, channels_last, torch.compile with CUDA graphs (raygap's default on one GPU: train.compile=auto).
Then one trial alone on the GPU against two and four trials sharing it (processes, as Ray runs two
trials with train.gpus_per_worker=0.5), eager and compiled, at the trials' batch: total images/s.
FLOP utilisation counts (2k + 3) forward-equivalents per image (Objective.passes) at PyTorch's FLOP
count of one forward, against the GPU's dense bf16 or TF32 peak (raygap.loop.PEAK_FLOPS).
`--device cpu --models smallcnn --shape 1,28,28 --steps 3` checks the script without a GPU.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.multiprocessing as mp

from raygap.attacks import make_attack
from raygap.loop import compile_mode, peak_flops, train_step
from raygap.methods.vaft import VAFT
from raygap.models import build_model, forward_flops

SETTINGS = {"fp32 (tf32 convolutions)": dict(bf16=False, channels_last=False, compile=False),
            "bf16": dict(bf16=True, channels_last=False, compile=False),
            "+ channels_last": dict(bf16=True, channels_last=True, compile=False),
            "+ torch.compile, CUDA graphs (default)": dict(bf16=True, channels_last=True, compile=True)}
ATTACK_STEPS = 10


def make_step(model_name, shape, batch, device, bf16: bool, channels_last: bool, mode: str | None, frozen: bool):
    """(step(i): one vAFT PGD-10 training step on the i-th of four resident batches, FLOPs per image).

    mode: torch.compile's (None: eager); frozen: the attack runs on frozen weights, as raygap's compiled
    step does (benchmarks/gpu_profile.py compares both).
    """
    torch.manual_seed(0)
    device = torch.device(device)
    x_all = torch.rand(4 * batch, *shape, device=device)  # resident data, as data.resident=auto does
    y_all = torch.randint(0, 10, (4 * batch,), device=device)
    if channels_last:
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    model = build_model(model_name, shape, 10, [0.5] * shape[0], [0.25] * shape[0])
    objective = VAFT(model, VAFT.Params(), make_attack("pgd", eps=8 / 255, steps=ATTACK_STEPS))
    module = objective.module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    flops = forward_flops(module, shape) * objective.passes(ATTACK_STEPS)
    torch.compiler.reset()  # each setting compiles afresh, not against the previous model's cache
    net = torch.compile(module, mode=mode) if mode else module
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)

    def step(i):
        index = slice((i % 4) * batch, (i % 4 + 1) * batch)
        train_step(objective, net, net, optimizer, x_all[index], y_all[index], bf16, compiled=frozen)
    return step, flops


def seconds_per_step(step, device, steps: int, warmup: int) -> float:
    """Mean time of `steps` steps after `warmup` (allocator, kernels, compilation, CUDA graph recording)."""
    def run(first, n):
        for i in range(first, first + n):
            step(i)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    run(0, warmup)
    started = time.perf_counter()
    run(warmup, steps)
    return (time.perf_counter() - started) / steps


def images_per_second(model_name, shape, batch, steps, device, bf16, channels_last, compile) -> tuple[float, float]:
    """(images/s, FLOPs per image) of `steps` timed vAFT PGD-10 steps in raygap's way for these settings."""
    mode = compile_mode(compile, torch.device(device), world=1)
    step, flops = make_step(model_name, shape, batch, device, bf16, channels_last, mode, frozen=mode is not None)
    return batch / seconds_per_step(step, device, steps, warmup=8 if mode else 3), flops


def _worker(args, queue):
    queue.put(images_per_second(*args)[0])


def shared(args: tuple, trials: int) -> float:
    """Total images/s of `trials` processes training at once on the same device."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, queue)) for _ in range(trials)]
    for p in procs:
        p.start()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,wrn34_10")
    parser.add_argument("--shape", default="3,32,32")
    parser.add_argument("--batches", default="128,512", help="the first one is also the shared-GPU table's")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"

    print(f"\nvAFT PGD-{ATTACK_STEPS} training steps on {name}, images of {'x'.join(map(str, shape))}, "
          f"data resident on the device, {args.steps} timed steps\n")
    print("| model | batch | setting | images/s | model FLOP utilisation | s per CIFAR-10 epoch (50k) |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for batch in batches:
            for setting, flags in SETTINGS.items():
                rate, flops = images_per_second(model, shape, batch, args.steps, args.device, **flags)
                peak = peak_flops(device, flags["bf16"])
                mfu = f"{rate * flops / peak:.1%}" if peak else "-"
                print(f"| {model} | {batch} | {setting} | {rate:,.0f} | {mfu} | {50_000 / rate:.1f} |", flush=True)

    print("\n| model | batch | setting | trials on the device | total images/s |\n|---|---|---|---|---|")
    for model in args.models.split(","):
        for setting in ("+ channels_last", "+ torch.compile, CUDA graphs (default)"):
            for trials in (1, 2, 4):
                job = (model, shape, batches[0], args.steps, args.device, *SETTINGS[setting].values())
                print(f"| {model} | {batches[0]} | {setting.lstrip('+ ')} | {trials} | {shared(job, trials):,.0f} |",
                      flush=True)

if __name__ == "__main__":
    main()
