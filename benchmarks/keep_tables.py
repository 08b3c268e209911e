"""Copy what a comparison resumes from out of its storage: every Parquet table (raygap.compare keeps each
arm whose finalist was evaluated) and the cached natural model the arms start from, without checkpoints,
journals or Tune's state. So a benchmark that runs for days survives the loss of its machine, and the
tables that benchmarks/README.md quotes lie beside it.

    python benchmarks/keep_tables.py <storage> benchmarks/results/<storage name>     # keep
    python benchmarks/keep_tables.py benchmarks/results/<storage name> <storage>     # then resume:
    python -m raygap.compare storage=<storage> ...                                 # the same command
"""

import shutil
import sys
from pathlib import Path


def kept(root: Path):
    """The files under storage `root` to keep: tables outside run folders, and natural models."""
    for path in sorted(root.rglob("*")):
        where = path.relative_to(root)
        if path.name.startswith("."):  # writes in flight
            continue
        if path.suffix == ".parquet" and "runs" not in where.parts:
            # an arm (<comparison>/<arm>/<table>/<part>) only once its finalist was evaluated: a search cut
            # short cannot resume without Tune's state, so the comparison runs that arm again from scratch
            # (the natural model's epochs, pretrained/<key>/epochs/<part>, are not needed either)
            if len(where.parts) != 4 or (root / where.parts[0] / where.parts[1] / "examples").is_dir():
                yield where
        elif where.parts[0] == "pretrained" and path.name in ("model.pt", "config.yaml"):
            yield where


if __name__ == "__main__":
    if len(sys.argv) != 3 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python benchmarks/keep_tables.py <storage folder> <folder to copy its tables to>")
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    files = list(kept(source))
    for where in files:
        (target / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / where, target / where)
    print(f"{len(files)} files copied to {target}")
