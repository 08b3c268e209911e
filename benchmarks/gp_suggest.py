"""How long Optuna's GPSampler (raygap's default searcher) takes to suggest a trial, with and without the
`greenlet` package, which Optuna uses to run its acquisition's L-BFGS-B restarts in a batch (without it, it
warns once and runs them one after another).

    python benchmarks/gp_suggest.py [--space afd] [--trials 16] [--repeats 3]

The default space, `afd` (digits), searches the same seven keys as `afd_cifar10_cpu`.

Each suggestion is raygap's own (`searcher.sampler` and `searcher.suggest` on the space's config, a sized
start-up), told a made-up objective; each variant runs in its own process, the two alternating `--repeats`
times, and the table gives the median over the runs of each run's mean seconds per suggestion after
the start-up. Without `greenlet` installed only the sequential row is measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
if {block}:
    sys.modules["greenlet"] = None  # Optuna then falls back to its sequential L-BFGS-B
import functools, optuna
from raygap import config, schema, searcher
optuna.logging.set_verbosity(optuna.logging.ERROR)
cfg = config.load(["tune.num_samples={trials}"], "{space}")
study = optuna.create_study(direction="maximize", sampler=searcher.sampler(cfg))
suggest = functools.partial(searcher.suggest, space=schema.as_dict(cfg.tune.space))
seconds = []
for _ in range({trials}):
    start = time.perf_counter()
    trial = study.ask()
    suggest(trial)
    seconds.append(time.perf_counter() - start)
    study.tell(trial, sum(v for v in trial.params.values() if isinstance(v, float)))
print(json.dumps(seconds[searcher.sized_startup({trials}):]))
"""


def per_suggestion(space: str, trials: int, block: bool) -> float:
    code = CHILD.format(block=block, trials=trials, space=space)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gp_suggest: the {space} search failed: {proc.stderr.strip().splitlines()[-1]}")
    return statistics.mean(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="afd")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    variants = {"sequential L-BFGS-B (no greenlet)": True}
    if importlib.util.find_spec("greenlet"):
        variants["batched L-BFGS-B (greenlet)"] = False
    runs = {name: [] for name in variants}
    for _ in range(args.repeats):  # alternating, so that a busy spell of the machine hits both
        for name, block in variants.items():
            runs[name].append(per_suggestion(args.space, args.trials, block))
    base = statistics.median(runs["sequential L-BFGS-B (no greenlet)"])
    print(f"GPSampler on {args.space}, {args.trials} trials, median of {args.repeats} runs\n")
    print("| L-BFGS-B | s per suggestion after the start-up | vs sequential |\n|---|---|---|")
    for name, seconds in runs.items():
        print(f"| {name} | {statistics.median(seconds):.3f} | {statistics.median(seconds) / base:.2f} |")
    if len(variants) == 1:
        print("\n(greenlet is not installed: pip install greenlet to measure the batched row)")


if __name__ == "__main__":
    main()
