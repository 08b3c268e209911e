"""Where a ResNet-18 vAFT PGD-10 step spends its time on a CUDA GPU (bf16, channels-last).

    python benchmarks/gpu_profile.py batches    # step time against batch size, cudnn.benchmark off and on
    python benchmarks/gpu_profile.py compile    # eager against torch.compile modes, weights frozen or not in the attack
    python benchmarks/gpu_profile.py kernels    # torch.profiler's top CUDA kernels of three eager steps at batch 512

The questions behind raygap's GPU defaults (benchmarks/README.md): is the eager step bound by the CPU
or the GPU, what does compiling buy, and why the attack runs on frozen weights when compiled.
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from gpu import make_step, seconds_per_step  # benchmarks/gpu.py, beside this file


def resnet18_step(batch: int, mode: str | None = None, frozen: bool = False):
    """One bf16, channels-last vAFT PGD-10 step of ResNet-18 on CIFAR-shaped data (see gpu.make_step)."""
    return make_step("resnet18", (3, 32, 32), batch, "cuda", True, True, mode, frozen)[0]


def timed(step, steps: int = 20, warmup: int = 8) -> float:
    return seconds_per_step(step, "cuda", steps, warmup)


def main(what: str):
    if what == "batches":
        print("| cudnn.benchmark | batch | ms per step | images/s |\n|---|---|---|---|")
        for benchmark in (False, True):
            torch.backends.cudnn.benchmark = benchmark
            for batch in (128, 256, 512, 1024):
                s = timed(resnet18_step(batch))
                print(f"| {benchmark} | {batch} | {s * 1e3:.1f} | {batch / s:,.0f} |", flush=True)
    elif what == "compile":
        print("| batch | torch.compile mode | weights frozen in the attack | images/s |\n|---|---|---|---|")
        for batch, mode, frozen in [(128, None, False), (128, None, True), (128, "default", False),
                                    (128, "default", True), (128, "reduce-overhead", True),
                                    (512, None, True), (512, "default", True), (512, "reduce-overhead", True)]:
            s = timed(resnet18_step(batch, mode, frozen))
            print(f"| {batch} | {mode or 'eager'} | {frozen} | {batch / s:,.0f} |", flush=True)
    elif what == "kernels":
        step = resnet18_step(512)
        timed(step, steps=1, warmup=3)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                step(i)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    else:
        sys.exit(f"unknown '{what}': choose batches, compile or kernels")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "batches")
