"""Ray's overhead: one fine-tuning run, and each trial of a search.

    python benchmarks/ray_overhead.py [--epochs 5] [--repeats 2] [--trials 4] [overrides ...]

First table: the same vAFT run in this process, on 1 Ray Train worker and on 2, side by side in one
process (a fresh local Ray cluster is started for the Ray modes and timed with them): wall time, its
ratio to the in-process run, the mean epoch time and images per second. In-process and the 1-worker
run use every core (the worker asks for all CPUs); the 2-worker run gives each worker half.

Second table: the default AFD search (two trials at a time, one CPU each) with `--trials` trials of
`--epochs` epochs and no early stopping, whose trials train in the Tune trial's own process
(train.workers=0, the default) or as 1-worker Ray Train runs. A trial's overhead is its time from
start to end in the trials table minus its epochs' time: starting its processes, loading data and
model, checkpoints, the export. The last column is that
overhead as a share of a trial whose epochs take one minute.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import config, results, runner, train, tune  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--storage", default=tempfile.mkdtemp(prefix="raygap-overhead-"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import ray

    cores = os.cpu_count()
    base = [f"storage={args.storage}", "method=vaft", f"train.epochs={args.epochs}", *args.overrides]
    natural = runner.natural_model(config.load(base))["checkpoint"]
    modes = {"in-process": ["train.workers=0"],
             "Ray Train, 1 worker": ["train.workers=1", f"train.cpus_per_worker={cores}"],
             "Ray Train, 2 workers": ["train.workers=2", f"train.cpus_per_worker={cores / 2}"]}
    rows = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        for mode, extra in modes.items():
            name = f"r{repeat}-{mode.replace(' ', '_').replace(',', '')}"
            cfg = config.load(base + extra + [f"pretrained={natural}", f"name={name}"])
            started = time.perf_counter()
            result = train.run(cfg)
            wall = time.perf_counter() - started
            ray.shutdown()  # each Ray mode pays for starting its cluster, as a user's command does
            history = result["history"]
            rows[mode].append((wall, statistics.mean(r["wall_seconds"] for r in history),
                               statistics.mean(r["images_per_s"] for r in history)))

    searches = []
    for label, workers in [("in the Tune trial's process (workers=0)", 0), ("as a 1-worker Ray Train run", 1)]:
        cfg = config.load([f"storage={args.storage}", f"name=search-w{workers}", f"pretrained={natural}",
                           f"train.workers={workers}", "tune.algorithm=random", "tune.scheduler.name=fifo",
                           f"tune.num_samples={args.trials}", f"train.epochs={args.epochs}", "final_eval.top_k=0",
                           *args.overrides], tune.DEFAULT_SEARCH)
        started = time.perf_counter()
        tune.run(cfg)
        wall = time.perf_counter() - started
        trials = results.read_table(f"{args.storage}/search-w{workers}", "trials")
        trial, epochs = (trials.ended_at - trials.started_at).mean(), trials.wall_seconds.mean()
        searches.append((label, wall, trial, epochs, trial - epochs))

    reference = statistics.mean(w for w, _, _ in rows["in-process"])
    print(f"\n{args.epochs} epochs of vAFT on {cfg.data.name} / {cfg.model.name}, {cores} cores, "
          f"mean of {args.repeats} runs\n")
    print("| mode | wall s | ratio | s per epoch | images/s |")
    print("|---|---|---|---|---|")
    for mode, values in rows.items():
        wall = statistics.mean(v[0] for v in values)
        print(f"| {mode} | {wall:.1f} | {wall / reference:.2f} | {statistics.mean(v[1] for v in values):.2f} | "
              f"{statistics.mean(v[2] for v in values):.0f} |")

    print(f"\nThe default search, {args.trials} trials of {args.epochs} epochs, {cfg.tune.max_concurrent} at a time "
          f"on {cores} cores\n")
    print("| each trial trains | search wall s | trial s | of which epochs s | overhead s per trial | "
          "overhead in a one-minute trial |")
    print("|---|---|---|---|---|---|")
    for label, wall, trial, epochs, overhead in searches:
        share = overhead / (60 + overhead)
        print(f"| {label} | {wall:.1f} | {trial:.1f} | {epochs:.1f} | {overhead:.1f} | {share:.0%} |")


if __name__ == "__main__":
    main()
