"""Defences compared at an equal tuning budget: `python -m raygap.compare [search=defences] [methods=[vaft,afd]]
[seeds=[0,1]] [untuned=[afd]] [overrides]`.

Each method is searched over its own part of the search space (the keys with no `when` on the method,
and those whose `when` names it) with the same budget: trials, epochs, early stopping, sampler and
seeds, one whole search per method and seed. Its finalist is chosen on validation only. Every
finalist, and each untuned arm (a method at its defaults, trained once with the search's training
settings), is attacked with `final_eval.attacks` on the same first `final_eval.n` test images. It
prints each arm's test figures and compute, and each paired difference with a 95% interval from a
paired bootstrap over the test images (and over the seeds where there are several). Under
`${storage}/${name}/` it writes the tables `arms`, `differences` and `examples` (which test image each
arm gets right under each attack), with each arm's own search or run folder beside them. Running the
same command again resumes; arms that are done are not run again, and seeds or methods added later
reuse the arms that exist.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from raygap import layout, results, runner, storage, stream, tune
from raygap.analysis import arm_summary, paired_interval, points
from raygap.cli import entry_point
from raygap.config import method_defaults, validate
from raygap.errors import UserError
from raygap.lock import DriverLock
from raygap.loop import Job
from raygap.methods import METHODS, from_scratch
from raygap.recorder import LOST
from raygap.schema import RaygapConfig, as_dict, digest, search_algorithm
from raygap.tune import pop_search

DEFAULT_SEARCH = "defences"
# The settings every arm shares: a space that searched them per method would give methods different
# data, models or judges.
SHARED = ("data.", "model.", "eval.", "final_eval.", "pretrain.", "storage", "name")


@dataclass
class Arm:
    """One method, searched (tuned) or at its defaults (untuned), at one seed, with its whole config."""

    method: str
    tuned: bool
    seed: int
    cfg: DictConfig

    @property
    def label(self) -> str:
        return f"{self.method} ({'tuned' if self.tuned else 'untuned'})"

    @property
    def name(self) -> str:
        return f"{self.method}-{'tuned' if self.tuned else 'untuned'}-seed{self.seed}"


def comparison_name(cfg, search: str) -> str:
    """`name` when given, else from the search space and every setting but which arms run (so methods and
    seeds added later find the arms that exist)."""
    shared = {k: v for k, v in as_dict(cfg).items() if k != "compare"}
    return cfg.name or f"compare-{Path(search).stem}-{cfg.data.name}-{cfg.model.name}-{digest(shared)}"


def plan(cfg, search: str) -> list[Arm]:
    """Every arm's config, validated; bad input is refused here with one line, before Ray starts."""
    space = as_dict(cfg.tune.space)
    offered = (space.get("method") or {}).get("values")
    if space.get("method", {}).get("type") != "choice":
        raise UserError(f"search space '{search}' does not search `method` as a choice; a comparison needs one that "
                        "does, with `when: {method: [...]}` on each method's own keys (e.g. search=defences)")
    c = cfg.compare
    methods = list(c.methods) or list(offered)
    for method in methods:
        if method not in METHODS:
            raise UserError(f"compare.methods: '{method}' is unknown; choose among: {', '.join(METHODS)}")
        if method not in offered:
            raise UserError(f"compare.methods: '{method}' is not among the methods search space '{search}' offers "
                            f"({', '.join(offered)}); add it to its tune.space.method values")
    if len(set(methods)) < 2:
        raise UserError(f"compare.methods names one method ({', '.join(methods)}); a comparison needs two or more, "
                        "e.g. methods=[vaft,afd]")
    if len(set(methods)) < len(methods) or len(set(c.seeds)) < len(c.seeds):
        raise UserError("compare.methods and compare.seeds must not repeat an entry")
    if not c.seeds:
        raise UserError("compare.seeds is empty: give one or more search seeds, e.g. seeds=[0]")
    for method in c.untuned:
        if method not in methods:
            raise UserError(f"compare.untuned: '{method}' is not compared; choose among compare.methods "
                            f"({', '.join(methods)})")
    if c.resamples < 100:
        raise UserError(f"compare.resamples must be >= 100 for a 95% interval, got {c.resamples}")
    starts = {METHODS[m].from_scratch for m in methods}
    if len(starts) > 1 and cfg.init == "auto":
        raise UserError(f"compare.methods mixes methods that fine-tune the natural model with ones that train from "
                        f"scratch ({', '.join(m for m in methods if METHODS[m].from_scratch)}): their starts differ; "
                        "set init=pretrained or init=scratch for all")
    for key in space:
        if key.startswith(SHARED):
            raise UserError(f"tune.space.{key}: a comparison gives every method the same data, model and "
                            f"evaluation; set {key} to one value instead of searching it")
    for method in methods:
        if not own_space(space, method):
            raise UserError(f"search space '{search}' has no key for method {method} to search: give it one (such as "
                            "train.lr), or compare it untuned only")
    # seed by seed, so that a comparison cut short has whole seeds
    return [arm for seed in c.seeds for arm in
            [Arm(m, True, seed, arm_config(cfg, m, seed, own_space(space, m))) for m in methods] +
            [Arm(m, False, seed, arm_config(cfg, m, seed, {})) for m in c.untuned]]


def own_space(space: dict, method: str) -> dict:
    """The part of a search space that belongs to `method`: keys with no `when` on the method or one that
    names it, without that condition (the method is fixed in its own search)."""
    own = {}
    for key, d in space.items():
        when = dict(d.get("when") or {})
        if key == "method" or method not in when.pop("method", [method]):
            continue
        own[key] = {**d, "when": when or None}
    return own


def arm_config(cfg, method: str, seed: int, space: dict) -> DictConfig:
    """The config of one arm: the method at its defaults for this data, this seed for the searcher and for
    training, its own space, its finalist chosen on validation alone (top_k 1); validated."""
    plain = as_dict(cfg)
    plain.pop("method")
    plain["tune"]["space"] = space
    arm = OmegaConf.merge(OmegaConf.structured(RaygapConfig(method=METHODS[method].Params())),
                          {"method": method_defaults(cfg.data.name, method)}, plain)
    arm.tune.seed = arm.train.seed = seed
    arm.final_eval.top_k = 1
    try:
        validate(arm)
    except UserError as err:
        raise UserError(f"{err} (method {method} in the comparison)") from None
    return arm


def run(cfg, search: str = DEFAULT_SEARCH) -> dict:
    """Run (or resume) the comparison; returns its tables as pandas DataFrames and where they are."""
    arms = plan(cfg, search)
    name = comparison_name(cfg, search)
    tuned = [arm for arm in arms if arm.tuned]
    t = cfg.tune
    print(f"comparison '{name}': {', '.join(dict.fromkeys(a.method for a in tuned))} each searched with "
          f"{t.num_samples} trials of {cfg.train.epochs} epochs ({search_algorithm(cfg)}, {t.scheduler.name}) "
          f"for each of seeds {list(cfg.compare.seeds)}" + (f", and {', '.join(cfg.compare.untuned)} untuned" if
                                                 cfg.compare.untuned else "") +
          f"; every finalist attacked with {', '.join(cfg.final_eval.attacks)} on the same "
          f"{cfg.final_eval.n or 'all'} test images; in {layout.experiment(cfg.storage, name)}", flush=True)
    return run_arms(cfg, name, arms, search)


def run_arms(cfg, name: str, arms: list[Arm], search: str) -> dict:
    """Run (or resume) `arms` (each with its validated config; an Arm subclass may name its arms otherwise,
    as benchmarks/decay.py does) under `${storage}/${name}/`, then write and print their tables."""
    folder = layout.experiment(cfg.storage, name)
    storage.check_writable(cfg.storage)
    streamed = stream.check_tree(cfg.data)
    for table in ("arms", "differences", "examples"):
        results.check_readable(folder, table)
    with DriverLock(folder):
        # An evaluated arm is not entered again: its tables are all the comparison reads, so a comparison
        # resumes from them alone (kept apart from the checkpoints, they survive a lost machine)
        evaluated = [finalist(arm, layout.experiment(folder, arm.name)) is not None for arm in arms]
        # one natural model for every arm
        if not all(evaluated) and not from_scratch(arms[0].cfg) and not cfg.pretrained:
            natural = runner.natural_model(cfg)["checkpoint"]
            for arm in arms:
                arm.cfg.pretrained = natural
        for number, (arm, done) in enumerate(zip(arms, evaluated), 1):
            print(f"\n[compare] arm {number} of {len(arms)}: {arm.label}, seed {arm.seed}"
                  + (": evaluated before, kept" if done else ""), flush=True)
            if done:
                continue
            arm.cfg.storage, arm.cfg.name = folder, arm.name
            if arm.tuned:
                tune.run(arm.cfg, search)
            else:
                run_untuned(arm, layout.experiment(folder, arm.name), streamed)
        return tables(cfg, name, folder, arms)


def run_untuned(arm: Arm, arm_dir: str, streamed: bool) -> None:
    """Train the arm's method once at its defaults and evaluate it as a finalist (skipping what is done);
    `streamed`: whether its data streams (stream.check_tree)."""
    run_dir = layout.run(arm_dir, "untuned")
    model = layout.model(run_dir)
    if not storage.exists(model):
        start = None if from_scratch(arm.cfg) else arm.cfg.pretrained
        runner.prepare(arm.cfg.train, streamed=arm.cfg.data if streamed else None)
        runner.execute(Job(as_dict(arm.cfg), arm.method, "train", start, run_dir, label=arm.name,
                           experiment_dir=arm_dir, trial_id="untuned"))
    if not storage.exists(layout.part(arm_dir, "examples", "untuned")):
        runner.connect()
        attacks = ", ".join(arm.cfg.final_eval.attacks)
        print(f"[compare] evaluating {arm.label} on the test split: {attacks}", flush=True)
        result = tune.final_evaluation(arm.cfg, as_dict(arm.cfg), model, layout.final_eval(run_dir))
        results.write_examples(arm_dir, "untuned", result, arm.cfg.final_eval.attacks)


def finalist(arm: Arm, arm_dir: str, trials=None) -> str | None:
    """The trial id of the arm's evaluated finalist ("untuned" for an untuned arm), None before its test
    figures are written; `trials`: the arm's trials table, when read already."""
    trial_id = "untuned"
    if arm.tuned:
        if trials is None:
            trials = results.read_table(arm_dir, "trials")  # empty before the search wrote a row
        finalists = trials[trials.finalist == True] if not trials.empty else trials  # noqa: E712 (nullable)
        if finalists.empty:
            return None
        trial_id = finalists.trial_id.iloc[0]
    return trial_id if storage.exists(layout.part(arm_dir, "examples", trial_id)) else None


def arm_row(arm: Arm, arm_dir: str) -> tuple[dict, object]:
    """(the arm's row of the arms table, its examples) read back from its folder."""
    trials = results.read_table(arm_dir, "trials") if arm.tuned else None
    trial_id = finalist(arm, arm_dir, trials)
    if trial_id is None:
        raise UserError(f"the search of {arm.label} at seed {arm.seed} has no evaluated finalist: no trial completed "
                        f"(see {arm_dir}/trials); fix the cause and run the same command again")
    if arm.tuned:
        # a trial lost to a killed driver ran again in its place: the crash's cost, not the method's budget
        params, runs = trials[trials.trial_id == trial_id].params.iloc[0], trials[trials.error != LOST]
    else:
        params = "{}"
        runs = results.read_table(arm_dir, "epochs").groupby("trial_id").agg(
            epochs=("epoch", "max"), cpu_seconds=("cpu_seconds", "sum"), gpu_seconds=("gpu_seconds", "sum"))
    examples = results.read_part(layout.part(arm_dir, "examples", trial_id))
    correct = [c for c in examples.columns if c.startswith("correct_")]
    row = {"arm": arm.label, "method": arm.method, "tuned": arm.tuned, "seed": arm.seed, "trial_id": trial_id,
           "experiment": arm.name, "params": params, "trials": len(runs),
           "failed": int((runs.status == "failed").sum()) if arm.tuned else 0,
           "epochs": int(runs.epochs.fillna(0).sum()),
           "cpu_seconds": float(runs.cpu_seconds.sum()), "gpu_seconds": float(runs.gpu_seconds.sum()),
           "examples": len(examples), **{f"test_{c.removeprefix('correct_')}_acc": float(examples[c].mean())
                                          for c in correct}}
    return row, examples


def tables(cfg, name: str, folder: str, arms: list[Arm]) -> dict:
    """Write and print the arms and the paired differences of every pair of arms; returns them."""
    import pandas as pd

    rows, masks = [], {}
    for arm in arms:
        row, examples = arm_row(arm, layout.experiment(folder, arm.name))
        rows.append(row)
        masks[arm.label, arm.seed] = examples
        # a copy of the arm's own part (its experiment column names the arm's folder, as in the arms table)
        results.write(layout.part(folder, "examples", arm.name), examples.to_dict("records"),
                      results.examples_schema(cfg.final_eval.attacks))
    first = next(iter(masks.values()))
    for (label, seed), examples in masks.items():
        if not (len(examples) == len(first) and (examples.label.values == first.label.values).all()):
            raise UserError(f"{label} at seed {seed} was evaluated on other test images than {arms[0].label} "
                            f"({len(examples)} against {len(first)}): final_eval changed between runs; use the "
                            "final_eval settings of the first run, or a new name=")
    frame = pd.DataFrame(rows)
    results.write(layout.part(folder, "arms", "arms"), rows, arms_schema(frame))
    seeds, labels = list(cfg.compare.seeds), list(dict.fromkeys(frame.arm))
    measures = [c.removeprefix("correct_") for c in masks[labels[0], seeds[0]].columns if c.startswith("correct_")]
    differences = []
    for a, b in itertools.combinations(labels, 2):
        for measure in measures:
            column = f"correct_{measure}"
            diff, low, high = paired_interval([masks[a, s][column] for s in seeds],
                                              [masks[b, s][column] for s in seeds], cfg.compare.resamples)
            differences.append({"a": a, "b": b, "measure": measure, "difference": diff, "low": low, "high": high,
                                "seeds": len(seeds), "examples": len(masks[a, seeds[0]]),
                                "resamples": cfg.compare.resamples})
    differences = pd.DataFrame(differences)
    results.write(layout.part(folder, "differences", "differences"), differences.to_dict("records"),
                  DIFFERENCES)
    print_tables(frame, differences, seeds)
    return {"folder": folder, "arms": frame, "differences": differences}


DIFFERENCES = pa.schema([("a", pa.string()), ("b", pa.string()), ("measure", pa.string()),
                         ("difference", pa.float64()), ("low", pa.float64()), ("high", pa.float64()),
                         ("seeds", pa.int64()), ("examples", pa.int64()), ("resamples", pa.int64())])


def arms_schema(frame) -> pa.Schema:
    text = {"arm", "method", "trial_id", "experiment", "params"}
    types = {"tuned": pa.bool_(), "seed": pa.int64(), "trials": pa.int64(), "failed": pa.int64(), "epochs": pa.int64(),
             "examples": pa.int64()}
    return pa.schema([(c, pa.string() if c in text else types.get(c, pa.float64())) for c in frame.columns])


def print_tables(arms, differences, seeds: list) -> None:
    """Each arm's test figures (means over seeds) and compute; the paired differences in the worst case and
    in clean accuracy; which arm is the most robust, by how much, and whether the interval excludes zero."""
    import pandas as pd

    tests = [c for c in arms.columns if c.startswith("test_")]
    board = arm_summary(arms)
    board[tests] = (100 * board[tests]).round(1)
    board = board.rename(columns={"cpu_seconds": "CPU-s", "gpu_seconds": "GPU-s", **{
        c: c[len("test_"):-len("_acc")].replace("robust", "worst case") + " %" for c in tests}})
    board = board.drop(columns=[c for c in ("CPU-s", "GPU-s") if not board[c].any()]).round({"CPU-s": 0, "GPU-s": 0})
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(f"\ntest accuracy of each arm's finalist (mean over {len(seeds)} seed{'s' * (len(seeds) > 1)}; "
              f"trials, epochs and seconds summed over them):")
        print(board.reset_index().to_string(index=False))
    for row in arms[arms.failed > 0].itertuples():  # a search that lost trials spent less than its budget
        print(f"  {row.failed} of {row.trials} trials of {row.arm} at seed {row.seed} failed: that search had less "
              f"than the others' budget ({row.epochs} epochs); why: the error column of {row.experiment}/trials")
    shown = differences[differences.measure.isin(["robust", "clean"])]
    print(f"\npaired differences a - b in points, with 95% intervals (paired bootstrap over the "
          f"{differences.examples.iloc[0]} test images" + (f" and the {len(seeds)} seeds" if len(seeds) > 1 else "")
          + "):")
    for row in shown.itertuples():
        measure = "worst case" if row.measure == "robust" else row.measure
        print(f"  {row.a} - {row.b}: {measure} {points(row.difference)} [{points(row.low)}, {points(row.high)}]"
              + ("" if row.low > 0 or row.high < 0 else "  (interval includes 0)"))
    best = board["worst case %"].idxmax()
    against = shown[(shown.measure == "robust") & ((shown.a == best) | (shown.b == best))]
    margins = []
    for row in against.itertuples():
        sign = 1 if row.a == best else -1
        low, high = sorted((sign * row.low, sign * row.high))
        margins.append(f"{points(sign * row.difference)} points over {row.b if sign == 1 else row.a} "
                       f"[{points(low)}, {points(high)}]{'' if low > 0 else ', not significant at 95%'}")
    print(f"\nmost robust (worst case over the attacks, on the test images): {best}: " + "; ".join(margins), flush=True)


def short_keys(override: str) -> str:
    """methods=, seeds=, untuned= and resamples= are short for compare.*."""
    key = override.split("=", 1)[0]
    return f"compare.{override}" if key in ("methods", "seeds", "untuned", "resamples") else override


def main():
    search, sys.argv[1:] = pop_search(sys.argv[1:], DEFAULT_SEARCH)
    entry_point(lambda cfg: run(cfg, search), last_line=lambda result: result["folder"], doc=__doc__,
                config_name=search, rewrite=short_keys)


if __name__ == "__main__":
    main()
