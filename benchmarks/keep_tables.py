"""Copy what a comparison resumes from out of its storage, so that a benchmark that runs for days survives the
loss of its machine, and the tables that benchmarks/README.md quotes lie beside it:

- every Parquet table: an evaluated arm is not entered again (raygap.compare reads only its tables);
- for an arm not evaluated yet, what lets it go on where it stopped rather than from its start: a search's
  Optuna study (raygap.tune goes on without Tune's state as a new Tune run over the same study, for the
  trials still to run) and the models of the trials it would evaluate now (its `final_eval.top_k` completed
  trials by its objective, and any trained trial whose row a lost driver left running); an untuned arm's
  trained model;
- the cached natural model the arms start from.

Left behind: Tune's state, the checkpoints of trials in flight (they restart), the other trials' models (one
kept before and no longer needed is removed from the copy). A population (PBT) cannot go on as a new Tune
run, so an unevaluated PBT arm is not kept and runs again.

    python benchmarks/keep_tables.py <storage> benchmarks/results/<storage name>     # keep
    python benchmarks/keep_tables.py benchmarks/results/<storage name> <storage>     # then resume:
    python -m raygap.compare storage=<storage> ...                                 # the same command
"""

import json
import shutil
import sys
from pathlib import Path

import pandas as pd

from raygap import results


def kept(root: Path) -> list[Path]:
    """The files under storage `root` to keep, relative to it."""
    files = []
    for path in sorted(root.rglob("[!.]*.parquet")):  # .*: writes in flight
        where = path.relative_to(root)
        if where.parts[0] != "pretrained" and "runs" not in where.parts:
            files.append(where)
    # the searches (raygap.tune's, a comparison's tuned arms) and untuned arms not evaluated yet
    searches = {path.parent for path in root.rglob("trials") if path.is_dir()}
    untuned = {path.parents[2] for path in root.glob("**/runs/untuned/model.pt")}
    for folder in sorted(searches | untuned):
        if (folder / "examples").is_dir():
            continue
        going_on = resume_files(folder) if folder in searches else [folder / "runs" / "untuned" / "model.pt"]
        if going_on is None:  # cannot go on: none of it is kept, and it runs again from its start
            files = [f for f in files if folder not in (root / f).parents]
        else:
            files += [f.relative_to(root) for f in going_on]
    for natural in sorted((root / "pretrained").glob("*")):
        files += [p.relative_to(root) for p in (natural / "model.pt", natural / "config.yaml") if p.is_file()]
    return files


def resume_files(search: Path) -> list[Path] | None:
    """What a search not evaluated yet goes on from besides its tables: its study and the models of the trials
    it would evaluate now; None for a population (PBT), which cannot go on as a new Tune run."""
    if not any((search / "trials").glob("[!.]*.parquet")):
        return []
    trials = pd.read_parquet(search / "trials")
    config = json.loads(trials.config.dropna().iloc[0])
    if config["tune"]["scheduler"]["name"] == "pbt":
        return None
    finalists = results.finalist_candidates(trials, config["tune"]["objectives"][0], config["final_eval"]["top_k"])
    # A trial whose row still says running may have ended: Tune tells the study before raygap writes the row,
    # and a driver lost in between leaves it so. The resumed search counts it completed from the study, so its
    # model (written only once it trained every epoch) is kept too, in case it is the best.
    unsettled = trials[trials.status == "running"]
    models = [search / "runs" / trial_id / "model.pt" for trial_id in [*finalists.trial_id, *unsettled.trial_id]]
    return [path for path in [search / "optuna.journal", *models] if path.is_file()]


if __name__ == "__main__":
    if len(sys.argv) != 3 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python benchmarks/keep_tables.py <storage folder> <folder to copy its tables to>")
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    files = kept(source)
    for where in files:
        (target / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / where, target / where)
    # a model kept earlier that a search no longer needs (another trial is better now, or it was evaluated)
    stale = [m for m in target.glob("**/runs/*/model.pt") if m.relative_to(target) not in files
             and (source / m.relative_to(target)).parents[2].is_dir()]
    for model in stale:
        model.unlink()
    removed = f", {len(stale)} models no longer needed removed" if stale else ""
    print(f"{len(files)} files copied to {target}{removed}")
