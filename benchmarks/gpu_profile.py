"""Where a ResNet-18 vAFT PGD-10 step spends its time on a CUDA GPU (bf16, channels-last).

    python benchmarks/gpu_profile.py batches    # step time against batch size, cudnn.benchmark off and on
    python benchmarks/gpu_profile.py compile    # eager against torch.compile modes, weights frozen or not in the attack
    python benchmarks/gpu_profile.py kernels    # torch.profiler's top CUDA kernels of three eager steps at batch 512

The questions behind raygap's GPU defaults (benchmarks/README.md): is the eager step bound by the CPU
or the GPU, what does compiling buy, and why the attack runs on frozen weights when compiled.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from raygap.attacks import make_attack
from raygap.loop import train_step
from raygap.methods import METHODS
from raygap.models import build_model


def make_step(batch: int, mode: str | None = None, frozen: bool = False):
    """A function running one step on one of four resident batches (the i-th), as raygap trains."""
    torch.manual_seed(0)
    torch.compiler.reset()
    x = torch.rand(4 * batch, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4 * batch,), device="cuda")
    model = build_model("resnet18", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3)
    objective = METHODS["vaft"].Objective(model, METHODS["vaft"].Params(), make_attack("pgd", eps=8 / 255, steps=10))
    module = objective.module.cuda().to(memory_format=torch.channels_last)
    net = torch.compile(module, mode=mode) if mode else module
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    return lambda i: train_step(objective, net, net, optimizer, x[i % 4 * batch:][:batch], y[i % 4 * batch:][:batch],
                                True, compiled=frozen)


def seconds_per_step(step, steps: int = 20, warmup: int = 8) -> float:
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def main(what: str):
    if what == "batches":
        print("| cudnn.benchmark | batch | ms per step | images/s |\n|---|---|---|---|")
        for benchmark in (False, True):
            torch.backends.cudnn.benchmark = benchmark
            for batch in (128, 256, 512, 1024):
                s = seconds_per_step(make_step(batch))
                print(f"| {benchmark} | {batch} | {s * 1e3:.1f} | {batch / s:,.0f} |", flush=True)
    elif what == "compile":
        print("| batch | torch.compile mode | weights frozen in the attack | images/s |\n|---|---|---|---|")
        for batch, mode, frozen in [(128, None, False), (128, None, True), (128, "default", False),
                                    (128, "default", True), (128, "reduce-overhead", True),
                                    (512, None, True), (512, "default", True), (512, "reduce-overhead", True)]:
            s = seconds_per_step(make_step(batch, mode, frozen))
            print(f"| {batch} | {mode or 'eager'} | {frozen} | {batch / s:,.0f} |", flush=True)
    elif what == "kernels":
        step = make_step(512)
        seconds_per_step(step, steps=1, warmup=3)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                step(i)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    else:
        sys.exit(f"unknown '{what}': choose batches, compile or kernels")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "batches")
