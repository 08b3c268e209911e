"""Ray Train's overhead: the same fine-tuning run in this process, on 1 Ray Train worker, on 2 workers.

    python benchmarks/ray_overhead.py [--epochs 5] [--repeats 2] [overrides ...]

Each mode trains vAFT from the same cached natural model with the same global batch, side by side in
one process (a fresh local Ray cluster is started for the Ray modes and timed with them). Prints wall
time, its ratio to the in-process run, the mean epoch time and images per second. In-process and the
1-worker run use every core (the worker asks for all CPUs); the 2-worker run gives each worker half.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import config, pretrain, train  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--storage", default=tempfile.mkdtemp(prefix="raygap-overhead-"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import ray

    cores = os.cpu_count()
    base = [f"storage={args.storage}", "method=vaft", f"train.epochs={args.epochs}", *args.overrides]
    natural = pretrain.run(config.load(base))["checkpoint"]
    modes = {"in-process": ["train.workers=0"],
             "Ray Train, 1 worker": ["train.workers=1", f"train.cpus_per_worker={cores}"],
             "Ray Train, 2 workers": ["train.workers=2", f"train.cpus_per_worker={cores / 2}"]}
    rows = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        for mode, extra in modes.items():
            cfg = config.load(base + extra + [f"pretrained={natural}", f"name=r{repeat}-{mode.replace(' ', '_').replace(',', '')}"])
            started = time.perf_counter()
            result = train.run(cfg)
            wall = time.perf_counter() - started
            ray.shutdown()  # each Ray mode pays for starting its cluster, as a user's command does
            history = result["history"]
            rows[mode].append((wall, statistics.mean(r["wall_seconds"] for r in history),
                               statistics.mean(r["images_per_s"] for r in history)))

    reference = statistics.mean(w for w, _, _ in rows["in-process"])
    print(f"\n{args.epochs} epochs of vAFT on {cfg.data.name} / {cfg.model.name}, {cores} cores, "
          f"mean of {args.repeats} runs\n")
    print("| mode | wall s | ratio | s per epoch | images/s |")
    print("|---|---|---|---|---|")
    for mode, values in rows.items():
        wall = statistics.mean(v[0] for v in values)
        print(f"| {mode} | {wall:.1f} | {wall / reference:.2f} | {statistics.mean(v[1] for v in values):.2f} | "
              f"{statistics.mean(v[2] for v in values):.0f} |")


if __name__ == "__main__":
    main()
