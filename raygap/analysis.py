"""Reading and analysing an experiment's Parquet tables: the helpers of `notebooks/analyze_trials.ipynb`
and of `python -m raygap.report`, usable from any Python session without Jupyter.

    from raygap import analysis
    trials, epochs = analysis.load(analysis.latest_experiment())
    analysis.plot_pareto(trials)
"""

from __future__ import annotations

import json

import pandas as pd

from raygap import layout, results, storage, study

# The test-split accuracy that marks finalists, strongest first: the per-example worst case over every
# final attack, then single attacks (columns of raygap.tune's finalists, or of older tables).
FINAL_ATTACKS = ["robust", "autoattack", "apgd_t", "apgd_ce", "cw", "pgd50", "pgd20", "pgd10", "fgsm"]
STATUS_MARKERS = {"completed": "o", "stopped_early": "v", "failed": "x", "running": "."}


def latest_experiment(root: str = "raygap_results") -> str:
    """The experiment folder under `root` (a local folder or a URI) whose trials table changed last."""
    import pyarrow.fs as pafs

    fs, where = storage.filesystem(root)
    newest = {}  # experiment folder -> when a part file of its trials table was last written
    if fs.get_file_info(where).type == pafs.FileType.Directory:
        for folder in fs.get_file_info(pafs.FileSelector(where)):
            table = pafs.FileSelector(f"{folder.path}/trials", allow_not_found=True)
            written = [f.mtime for f in fs.get_file_info(table) if f.type == pafs.FileType.File and f.mtime]
            if folder.type == pafs.FileType.Directory and written:
                newest[storage.join(root, folder.base_name)] = max(written)
    if not newest:
        raise FileNotFoundError(f"no experiment under {storage.absolute(root)}: run `python -m raygap.tune` first, "
                                "or name the experiment folder")
    return max(newest, key=newest.get)


def how_to_open(experiment_dir: str, optuna_storage: str = "", with_study: bool = True) -> list[str]:
    """Commands that open the experiment's study (`with_study`: study.exists; a PBT search has none) and
    tables elsewhere (for a bucket too: pandas and DuckDB read it through pyarrow's filesystems, with no fsspec
    or DuckDB extension to install)."""
    return [f"{study.dashboard_command(optuna_storage, experiment_dir)}"] * with_study + [
            f"python -c \"import pandas as pd; print(pd.read_parquet('{experiment_dir}/trials'))\"",
            f"python -c \"import duckdb, pyarrow.dataset as ds; epochs = ds.dataset('{experiment_dir}/epochs'); "
            f"print(duckdb.sql('SELECT trial_id, max(robust_acc) FROM epochs GROUP BY trial_id'))\""]


def load(experiment_dir: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) of an experiment as pandas DataFrames."""
    trials = results.read_table(experiment_dir, "trials")
    if trials.empty:
        raise FileNotFoundError(f"{experiment_dir} has no trials table: is it an experiment folder of raygap.tune?")
    if "kept_robust_acc" not in trials:  # a table written before trials exported their best epoch: the last
        trials = trials.assign(kept_epoch=trials.epochs, kept_clean_acc=trials.clean_acc,
                               kept_robust_acc=trials.robust_acc)
    return trials, results.read_table(experiment_dir, "epochs")


def searched(trials: pd.DataFrame) -> list[str]:
    """The searched hyperparameters (config keys, each a column), in the search space's order."""
    keys: dict = {}
    for params in trials.params.dropna():
        keys.update(dict.fromkeys(json.loads(params)))
    return list(keys)


def final_attack(trials: pd.DataFrame) -> str | None:
    """The column of the strongest attack the finalists were evaluated with, if any."""
    for attack in FINAL_ATTACKS:
        column = f"test_{attack}_acc"
        if column in trials and trials[column].notna().any():
            return column
    return None


def color_key(trials: pd.DataFrame) -> str | None:
    """What to colour trials by: the method when several were searched, else the disentangler size."""
    for key in ["method.name", "method.disentangler_size", *searched(trials)]:
        if key in trials and trials[key].nunique() > 1:
            return key
    return None


def pareto_front(frame: pd.DataFrame, x: str = "kept_clean_acc", y: str = "kept_robust_acc") -> pd.DataFrame:
    """The rows not dominated in (x, y), both maximised: no other row is >= on both and > on one.

    Sorted by x descending. Rows with a missing x or y are left out.
    """
    rows = frame.dropna(subset=[x, y]).sort_values([x, y], ascending=False)
    keep, best_y = [], float("-inf")
    for index, value in rows[y].items():
        # sorted by x descending (ties: y descending), a row is on the front iff its y beats every
        # row before it, which all have at least its x
        if value > best_y:
            keep.append(index)
            best_y = value
    return rows.loc[keep]


def leaderboard(trials: pd.DataFrame, metric: str = "kept_robust_acc", mode: str = "max") -> pd.DataFrame:
    """The trials best first by `metric`, with the columns people compare them on: the validation figures of
    the epoch each exported (kept_*, with the robust one's standard error) and the finalists' test figures."""
    tests = [c for c in trials.columns if c.startswith("test_")]
    se = ["kept_robust_se"] if "kept_robust_se" in trials else []
    shown = ["trial_id", "status", *searched(trials), "epochs", "kept_epoch", "kept_clean_acc", "kept_robust_acc",
             *se, *tests, "gpu_seconds", "cpu_seconds"]
    return trials.sort_values(metric, ascending=mode == "min", na_position="last")[shown]


def paired_interval(a, b, resamples: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean of a - b, low, high): the difference in accuracy of two models attacked on the same examples,
    with its `level` interval from a paired percentile bootstrap.

    a, b: per-example correctness (1 or 0), one sequence per seed (or one sequence), the same examples in the
    same order in each. Each resample draws the examples with replacement, the same draw for both models
    and every seed, and, with several seeds, the seeds with replacement: both sources of variation count.
    """
    import numpy as np

    d = np.atleast_2d(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))  # seeds x examples
    seeds, n = d.shape
    rng = np.random.default_rng(seed)
    stats = []
    for size in [1000] * (resamples // 1000) + [resamples % 1000]:  # in chunks: a resample is n counts
        counts = rng.multinomial(n, np.full(n, 1 / n), size=size)  # how often each example is drawn
        per_seed = counts @ d.T / n  # size x seeds
        if seeds > 1:
            per_seed = np.take_along_axis(per_seed, rng.integers(0, seeds, size=(size, seeds)), axis=1)
        stats.append(per_seed.mean(axis=1))
    low, high = np.quantile(np.concatenate(stats), [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(low), float(high)


def _axes(ax, size=(6, 4.5)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


def _colors(values: pd.Series) -> dict:
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return {v: palette(i % 10) for i, v in enumerate(sorted(values.dropna().unique(), key=str))}


def plot_pareto(trials: pd.DataFrame, ax=None):
    """Clean vs robust validation accuracy of every trial at the epoch it exported; the front joined and ringed;
    finalists starred, with their test accuracy under the strongest final attack written beside them."""
    ax = _axes(ax)
    key = color_key(trials)
    scored = trials.dropna(subset=["kept_clean_acc", "kept_robust_acc"])
    groups = scored[key] if key else pd.Series("all", index=scored.index)
    colors = _colors(groups)
    for (value, status), group in scored.groupby([groups, scored.status]):
        ax.scatter(group.kept_clean_acc, group.kept_robust_acc, color=colors[value], alpha=0.8,
                   marker=STATUS_MARKERS.get(status, "o"), label=f"{key}={value}, {status}" if key else status)
    front = pareto_front(scored)
    ax.plot(front.kept_clean_acc, front.kept_robust_acc, "k--", lw=1, drawstyle="steps-post", label="Pareto front")
    ax.scatter(front.kept_clean_acc, front.kept_robust_acc, s=160, facecolors="none", edgecolors="k")
    column = final_attack(trials)
    if column:
        final = scored[scored[column].notna()]
        ax.scatter(final.kept_clean_acc, final.kept_robust_acc, marker="*", s=260, color="gold", edgecolors="k",
                   zorder=3, label=f"finalist (its {column} on the test split written beside it)")
        for row in final.itertuples():
            ax.annotate(f"{getattr(row, column):.3f}", (row.kept_clean_acc, row.kept_robust_acc), xytext=(8, -4),
                        textcoords="offset points", fontsize=8)
    ax.margins(0.1)
    ax.set(xlabel="clean accuracy (validation, epoch kept)", ylabel="robust accuracy (validation, epoch kept)",
           title=f"{len(scored)} trials: clean vs robust accuracy")
    ax.legend(fontsize=7)
    return ax.figure


def plot_learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, metric: str = "robust_acc", ax=None):
    """`metric` per epoch for each trial; trials stopped early end in a black triangle, failed ones in an x."""
    ax = _axes(ax)
    key = color_key(trials)
    colors = _colors(trials[key]) if key else {}
    status = trials.set_index("trial_id").status
    for trial_id, curve in epochs.sort_values("epoch").groupby("trial_id"):
        color = colors.get(curve[key].iloc[0], "tab:blue") if key else "tab:blue"
        ax.plot(curve.epoch, curve[metric], color=color, alpha=0.7, lw=1.2, marker=".")
        end = status.get(trial_id)
        if end in ("stopped_early", "failed"):
            ax.scatter(curve.epoch.iloc[-1], curve[metric].iloc[-1], color="black", zorder=3,
                       marker=STATUS_MARKERS[end], s=60)
    for end in ("stopped_early", "failed"):
        ax.scatter([], [], color="black", marker=STATUS_MARKERS[end], label=end.replace("_", " "))
    for value, color in colors.items():
        ax.plot([], [], color=color, label=f"{key}={value}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="epoch", ylabel=f"{metric} (validation)",
           title=f"learning curves of {epochs.trial_id.nunique()} trials")
    ax.legend(fontsize=7)
    return ax.figure


def scheduled(trials: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    """The searched keys whose value changed during a trial (a PBT search's schedules), in the space's order."""
    keys = [k for k in searched(trials) if k in epochs]
    return [k for k in keys if (epochs.groupby("trial_id")[k].nunique(dropna=False) > 1).any()]


def plot_schedules(trials: pd.DataFrame, epochs: pd.DataFrame):
    """Each searched key per epoch for every trial of a PBT search: the schedules the population followed.
    An epoch trained from another trial's state (PBT's exploit) is ringed, with a dotted line from its parent."""
    import matplotlib.pyplot as plt

    keys = scheduled(trials, epochs) or searched(trials)[:1]
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.6 * len(keys)), squeeze=False, layout="constrained")
    rows = epochs.sort_values("epoch")
    clones = rows[rows.parent_trial.notna()] if "parent_trial" in rows else rows.iloc[:0]
    for ax, key in zip(axes[:, 0], keys):
        for trial_id, curve in rows.groupby("trial_id"):
            ax.plot(curve.epoch, curve[key], marker=".", lw=1.2, alpha=0.8, label=trial_id)
        for clone in clones.itertuples():
            parent = rows[(rows.trial_id == clone.parent_trial) & (rows.epoch == clone.parent_epoch)]
            value = rows.loc[clone.Index, key]
            ax.scatter(clone.epoch, value, s=90, facecolors="none", edgecolors="k", zorder=3)
            if not parent.empty:
                ax.plot([clone.parent_epoch, clone.epoch], [parent[key].iloc[0], value], "k:", lw=0.8)
        ax.set(ylabel=key, yscale="log" if key in ("train.lr", "train.weight_decay") else "linear")
        ax.xaxis.get_major_locator().set_params(integer=True)
    exploits = f"{len(clones)} exploit{'s' * (len(clones) != 1)}"
    axes[0, 0].set_title(f"the schedules of {rows.trial_id.nunique()} trials ({exploits} ringed)")
    axes[-1, 0].set_xlabel("epoch")
    axes[0, 0].legend(fontsize=6, ncol=2)
    return fig


def plot_hyperparameters(trials: pd.DataFrame, params: list | None = None):
    """One column per searched hyperparameter: robust (top) and clean (bottom) accuracy against it."""
    import matplotlib.pyplot as plt

    params = [p for p in (params or searched(trials)) if p in trials]
    fig, axes = plt.subplots(2, max(len(params), 1), figsize=(4 * max(len(params), 1), 6), squeeze=False,
                             layout="constrained")
    scored = trials.dropna(subset=["kept_clean_acc", "kept_robust_acc"])
    for j, param in enumerate(params):
        values = scored[param]
        numeric = pd.api.types.is_numeric_dtype(values)
        positions = values if numeric else values.astype(str)
        for i, metric in enumerate(["kept_robust_acc", "kept_clean_acc"]):
            ax = axes[i, j]
            for status, group in scored.groupby("status"):
                ax.scatter(positions[group.index], group[metric], marker=STATUS_MARKERS.get(status, "o"),
                           alpha=0.8, label=status)
            if numeric and values.min() > 0 and values.max() / values.min() > 20:
                ax.set_xscale("log")
            ax.set(xlabel=param, ylabel=f"{metric.removeprefix('kept_')} (validation)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("accuracy against each searched hyperparameter")
    return fig


def importances(experiment_dir: str, storage_url: str | None = None) -> pd.Series:
    """Optuna's fANOVA importance of each hyperparameter for the study's first objective, seeded.

    fANOVA, not PED-ANOVA: on a 32-trial digits search, fANOVA's ranking of the keys on 8, 16 and 24 of the
    trials agreed better with its ranking on all of them (Spearman 0.36, 0.71, 0.85 against 0.17, 0.45,
    0.79; benchmarks/importance.py, benchmarks/README.md). Below about 20 trials it is a rough guide.
    Read from the study the search saved (raygap.study: the journal in the experiment folder by default).
    Empty when the study has too few finished trials or no hyperparameter common to all of them.
    """
    import optuna

    name = experiment_dir.rstrip("/").rsplit("/", 1)[-1]
    if not study.exists(storage_url or "", experiment_dir):  # a PBT search runs without Optuna
        return pd.Series(dtype=float, name="importance")
    optuna_study = optuna.load_study(study_name=name, storage=study.open_storage(storage_url or "", experiment_dir))
    target = (lambda t: t.values[0]) if len(optuna_study.directions) > 1 else None
    done = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    # importances need every completed trial to share at least one hyperparameter that varies
    if len(done) < 2 or not any(len({str(t.params.get(p)) for t in done}) > 1
                                for p in set.intersection(*(set(t.params) for t in done))):
        return pd.Series(dtype=float, name="importance")
    found = optuna.importance.get_param_importances(
        optuna_study, target=target, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    return pd.Series(found, name="importance").sort_values()


def plot_importances(series: pd.Series, ax=None):
    ax = _axes(ax, size=(6, 3))
    if series.empty:
        ax.text(0.5, 0.5, "too few completed trials for importances", ha="center", va="center")
    else:
        ax.barh(series.index, series.values, color="tab:purple")
    ax.set(xlabel="importance (Optuna, first objective)", title="hyperparameter importance")
    return ax.figure


def plot_cost(trials: pd.DataFrame, ax=None):
    """Robust and clean validation accuracy against each trial's compute (GPU-seconds when trials used
    GPUs, else CPU-seconds)."""
    ax = _axes(ax)
    cost = "gpu_seconds" if trials.gpu_seconds.fillna(0).sum() > 0 else "cpu_seconds"
    for metric, color in [("kept_robust_acc", "tab:red"), ("kept_clean_acc", "tab:blue")]:
        for status, group in trials.dropna(subset=[metric]).groupby("status"):
            ax.scatter(group[cost], group[metric], color=color, marker=STATUS_MARKERS.get(status, "o"), alpha=0.8,
                       label=f"{metric.removeprefix('kept_')}, {status}")
    ax.set(xlabel=cost.replace("_", "-"), ylabel="accuracy (validation)", title="accuracy against cost")
    ax.legend(fontsize=7)
    return ax.figure


def load_comparison(folder: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(arms, differences, examples) of a `raygap.compare` folder: one row per arm and seed, per paired
    difference, and per test example of each arm (join examples to arms on `experiment`)."""
    arms = results.read_table(folder, "arms")
    if arms.empty:
        raise FileNotFoundError(f"{folder} has no arms table: is it the folder of a raygap.compare run?")
    return arms, results.read_table(folder, "differences"), results.read_table(folder, "examples")


def arm_summary(arms: pd.DataFrame) -> pd.DataFrame:
    """One row per arm (in the arms table's order): its test accuracies averaged over the seeds, the trials
    (and how many failed), epochs and compute of its searches summed over them."""
    tests = [c for c in arms.columns if c.startswith("test_")]
    return arms.groupby("arm", sort=False).agg({"trials": "sum", **({"failed": "sum"} if "failed" in arms else {}),
                                                "epochs": "sum", "cpu_seconds": "sum",
                                                "gpu_seconds": "sum", **{c: "mean" for c in tests}})


def plot_comparison(arms: pd.DataFrame, differences: pd.DataFrame):
    """Left: each arm's test accuracy clean, under each attack and in the worst case (bars: the mean over
    seeds; dots: each seed). Right: the paired differences in the worst case with their 95% intervals."""
    import matplotlib.pyplot as plt
    import numpy as np

    tests = [c for c in arms.columns if c.startswith("test_")]
    labels = list(dict.fromkeys(arms.arm))
    robust = differences[differences.measure == "robust"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.45 * len(robust) + 1.5)), layout="constrained")
    width = 0.8 / len(labels)
    colors = _colors(pd.Series(labels))
    for i, label in enumerate(labels):
        mine = arms[arms.arm == label]
        x = np.arange(len(tests)) + (i - (len(labels) - 1) / 2) * width
        left.bar(x, 100 * mine[tests].mean(), width, color=colors[label], label=label, alpha=0.85)
        for _, seed in mine.iterrows():
            left.scatter(x, 100 * seed[tests].astype(float), color="k", s=8, zorder=3)
    names = [c[len("test_"):-len("_acc")].replace("robust", "worst case") for c in tests]
    left.set_xticks(np.arange(len(tests)), names)
    left.set(ylabel="test accuracy (%)",
             title=f"each arm's finalist on the same {int(arms.examples.iloc[0])} test images")
    left.legend(fontsize=7)
    y = np.arange(len(robust))[::-1]
    right.errorbar(100 * robust.difference, y, xerr=[100 * (robust.difference - robust.low),
                                                     100 * (robust.high - robust.difference)], fmt="o", capsize=4)
    right.axvline(0, color="k", lw=0.8)
    right.set_yticks(y, [f"{a}\n - {b}" for a, b in zip(robust.a, robust.b)], fontsize=8)
    right.set(xlabel="difference in worst-case test accuracy (points), 95% paired bootstrap",
              title="paired differences")
    return fig


def plot_arm_importances(folder: str, arms: pd.DataFrame):
    """Hyperparameter importance in each tuned arm's search (its first seed), one panel per arm."""
    import matplotlib.pyplot as plt

    tuned = arms[arms.tuned].drop_duplicates("arm")
    fig, axes = plt.subplots(1, max(len(tuned), 1), figsize=(5 * max(len(tuned), 1), 3.2), squeeze=False,
                             layout="constrained")
    for ax, row in zip(axes[0], tuned.itertuples()):
        plot_importances(importances(layout.experiment(folder, row.experiment)), ax=ax)
        ax.set_title(f"{row.arm}: importance", fontsize=9)
    return fig


def figures(experiment_dir: str, trials: pd.DataFrame, epochs: pd.DataFrame) -> dict:
    """Every figure of the analysis of the experiment's tables (as `load` returns them), by name."""
    found = {"pareto": plot_pareto(trials), "learning_curves": plot_learning_curves(trials, epochs),
             "hyperparameters": plot_hyperparameters(trials)}
    if scheduled(trials, epochs):
        found["schedules"] = plot_schedules(trials, epochs)
    return {**found, "importances": plot_importances(importances(experiment_dir)), "cost": plot_cost(trials)}


def points(fraction: float) -> str:
    """A signed difference in percentage points, one decimal, with no '-0.0'."""
    return f"{100 * fraction + 0.0:+.1f}".replace("-0.0", "+0.0")
