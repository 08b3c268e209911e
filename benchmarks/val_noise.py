"""How noisy a trial's validation figure is, and how much pairing saves: the numbers that size `eval.val_n`.

    python benchmarks/val_noise.py [--space afd_cifar10_cpu] [--sizes 250 500 1000 2000] [--seeds 5] [overrides]

Fine-tunes two models of the space's settings from its natural model (AFD and vAFT at their defaults,
`train.epochs` as the space says), then measures their robust accuracy under `eval.val_attack` on the
validation split: on the first n images under `--seeds` attack seeds (the attack's own noise), on every
disjoint block of n images at one seed (the choice of images), against the binomial standard error
sqrt(p(1 - p) / n); and the two models' difference on the same blocks (paired, as raygap validates every
trial) against the standard error the difference would have on different images (unpaired).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raygap import checkpoint, config, data, train  # noqa: E402
from raygap.attacks import correct_mask, make_attack  # noqa: E402


def correct(model, split, attack, seed: int, batch_size: int) -> np.ndarray:
    torch.manual_seed(seed)
    return correct_mask(model, split, attack, batch_size).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="afd_cifar10_cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--storage", default="./raygap_results")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    base = [f"storage={args.storage}", *args.overrides]
    models = {}
    for method in ("afd", "vaft"):
        cfg = config.load([*base, f"method={method}"], args.space, search=False)
        models[method] = checkpoint.load(train.run(cfg)["checkpoint"])[0].requires_grad_(False)
    dataset = data.load(cfg.data)
    attack = make_attack(cfg.eval.val_attack, eps=cfg.eval.eps, norm=cfg.eval.norm, num_classes=dataset.num_classes)
    val = dataset.val
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\n{args.space} ({cfg.data.name}, {cfg.model.name}), {len(val)} validation images, {cfg.eval.val_attack} at "
          f"eps {cfg.eval.eps:.4g}; commit {commit}; {' '.join(sys.argv)}\n")
    started = time.perf_counter()
    # the whole validation split once per model at seed 0 (the blocks), and the largest first-n under each seed
    whole = {m: correct(model, val, attack, 0, cfg.eval.batch_size) for m, model in models.items()}
    first = max(args.sizes)
    head = data.Split(val.x[:first], val.y[:first])
    by_seed = {m: [correct(model, head, attack, s, cfg.eval.batch_size) for s in range(args.seeds)]
               for m, model in models.items()}
    print("| n | robust acc (AFD) | binomial SE | sd over attack seeds | sd over disjoint blocks (count) "
          "| AFD - vAFT: sd paired | SE unpaired |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        p = whole["afd"].mean()
        seeds = [m[:n].mean() for m in by_seed["afd"]]
        blocks = len(val) // n
        afd = [whole["afd"][k * n:(k + 1) * n].mean() for k in range(blocks)]
        vaft = [whole["vaft"][k * n:(k + 1) * n].mean() for k in range(blocks)]
        q = whole["vaft"].mean()
        paired = np.std(np.subtract(afd, vaft), ddof=1) if blocks > 1 else float("nan")
        print(f"| {n} | {p:.3f} | {math.sqrt(p * (1 - p) / n):.4f} | {np.std(seeds, ddof=1):.4f} | "
              f"{np.std(afd, ddof=1) if blocks > 1 else float('nan'):.4f} ({blocks}) | {paired:.4f} | "
              f"{math.sqrt((p * (1 - p) + q * (1 - q)) / n):.4f} |")
    print(f"\n(vAFT's robust accuracy {whole['vaft'].mean():.3f}; measured in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
