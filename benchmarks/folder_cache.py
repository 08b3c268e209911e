"""Loading an ImageFolder tree: the first load (decoding every image) against later ones (the cache).

    python benchmarks/folder_cache.py --root ~/cifar10-jpeg [--repeats 3] [overrides ...]

Removes the tree's `.raygap_cache/` first, then loads the tree with `data=cifar10_folder` (raygap.data.load:
scan, decode or read the cache, split) once cold and --repeats times warm. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import config, data  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the extracted tree (train/<class>/...)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    root = Path(args.root).expanduser()
    shutil.rmtree(root / ".raygap_cache", ignore_errors=True)
    cfg = config.load(["data=cifar10_folder", f"data.root={root}", *args.overrides]).data

    def seconds():
        started = time.perf_counter()
        dataset = data.load(cfg)
        return time.perf_counter() - started, len(dataset.train) + len(dataset.val) + len(dataset.test)

    cold, images = seconds()
    warm = [seconds()[0] for _ in range(args.repeats)]
    print(f"\n{images} images under {root}, {os.cpu_count()} cores\n")
    print("| load | seconds |\n|---|---|")
    print(f"| first (decode every image, write the cache) | {cold:.1f} |")
    print(f"| later (read the cache), median of {args.repeats} | {statistics.median(warm):.1f} |")
    print(f"| ratio | {cold / statistics.median(warm):.1f}x |")


if __name__ == "__main__":
    main()
