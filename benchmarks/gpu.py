"""GPU throughput of PGD-10 adversarial training: images/s and model FLOP utilisation per setting.

    python benchmarks/gpu.py [--models resnet18,wrn34_10] [--batch 512] [--steps 30] [--device cuda]

CIFAR-10-shaped random data resident on the GPU; `raygap.loop.train_step` of vAFT with PGD-10, the
step every trial runs. Settings, side by side in one run: fp32, bf16 autocast, bf16 + channels_last
(raygap's default on CUDA), and that plus torch.compile. Then one trial alone on the GPU against two
trials sharing it (two processes, as Ray runs two trials with train.gpus_per_worker=0.5): total
images/s. FLOP utilisation counts (2k + 3) forward-equivalents per image (Objective.passes) at
PyTorch's FLOP count of one forward, against the GPU's dense peak (raygap.loop.PEAK_FLOPS).
`--device cpu --models smallcnn --shape 1,28,28 --steps 3` checks the script without a GPU.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.multiprocessing as mp

from raygap.attacks import make_attack
from raygap.loop import peak_flops, train_step
from raygap.methods import METHODS
from raygap.models import build_model, forward_flops

SETTINGS = {"fp32": dict(bf16=False, channels_last=False, compile=False),
            "bf16": dict(bf16=True, channels_last=False, compile=False),
            "bf16 + channels_last (default)": dict(bf16=True, channels_last=True, compile=False),
            "bf16 + channels_last + compile": dict(bf16=True, channels_last=True, compile=True)}
ATTACK_STEPS = 10


def images_per_second(model_name, shape, batch, steps, device, bf16, channels_last, compile) -> tuple[float, float]:
    """(images/s, FLOPs per image) of `steps` timed vAFT PGD-10 steps after warm-up."""
    torch.manual_seed(0)
    device = torch.device(device)
    x_all = torch.rand(4 * batch, *shape, device=device)  # resident data, as data.resident=auto does
    y_all = torch.randint(0, 10, (4 * batch,), device=device)
    model = build_model(model_name, shape, 10, [0.5] * shape[0], [0.25] * shape[0])
    objective = METHODS["vaft"].Objective(model, METHODS["vaft"].Params(), make_attack("pgd", eps=8 / 255, steps=ATTACK_STEPS))
    module = objective.module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    flops = forward_flops(module, shape) * objective.passes(ATTACK_STEPS)
    net = torch.compile(module) if compile else module
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)

    def run(n):
        for i in range(n):
            index = slice((i % 4) * batch, (i % 4 + 1) * batch)
            x = x_all[index].contiguous(memory_format=torch.channels_last) if channels_last else x_all[index]
            train_step(objective, module, net, optimizer, x, y_all[index], bf16)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(3 if not compile else 6)  # warm-up (and compilation)
    started = time.perf_counter()
    run(steps)
    return batch * steps / (time.perf_counter() - started), flops


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
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"

    print(f"\nvAFT PGD-{ATTACK_STEPS} training steps on {name}, batch {args.batch} of {'x'.join(map(str, shape))}, "
          f"data resident on the device, {args.steps} timed steps\n")
    print("| model | setting | images/s | model FLOP utilisation | s per CIFAR-10 epoch (50k) |")
    print("|---|---|---|---|---|")
    for model in args.models.split(","):
        for setting, flags in SETTINGS.items():
            rate, flops = images_per_second(model, shape, args.batch, args.steps, args.device, **flags)
            peak = peak_flops(device, flags["bf16"])
            mfu = f"{rate * flops / peak:.1%}" if peak else "-"
            print(f"| {model} | {setting} | {rate:,.0f} | {mfu} | {50_000 / rate:.1f} |", flush=True)

    print("\n| model | trials on the device | total images/s |\n|---|---|---|")
    for model in args.models.split(","):
        default = (model, shape, args.batch, args.steps, args.device, True, True, False)
        for trials in (1, 2):
            print(f"| {model} | {trials} | {shared(default, trials):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
