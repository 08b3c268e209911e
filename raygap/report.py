"""The analysis without Jupyter: `python -m raygap.report [name=EXPERIMENT] [storage=...]`.

For the folder of a `raygap.compare` run, the comparison's page (each arm's test figures, the paired
differences with their intervals, each search's hyperparameter importance). For a search, it writes the
figures of notebooks/analyze_trials.ipynb as PNG files and a page to send to a colleague
(a one-line summary, the leaderboard and the Pareto front in percent, each figure with what to read
from it, and the commands that open the study and the tables) to `${storage}/${name}/report/`.
Without `name`, the experiment under `storage` that changed last.
"""

from __future__ import annotations

import html
import io
import json

import pandas as pd

from raygap import analysis, layout, storage, study
from raygap.cli import entry_point
from raygap.errors import UserError

# Each figure's heading and what to read from it, in the page's order.
FIGURES = {
    "pareto": ("Clean against robust accuracy",
               "Validation accuracy at each trial's last epoch. The ringed trials, joined by the dashed line, are the "
               "Pareto front: none is beaten on both accuracies. Finalists are starred, with their test accuracy "
               "under the strongest final attack beside them."),
    "learning_curves": ("Learning curves",
                        "Robust validation accuracy per epoch. A curve that ends early in a triangle was stopped by "
                        "the scheduler, one that ends in an x failed; curves that fall late show robust overfitting."),
    "hyperparameters": ("Accuracy against each searched hyperparameter",
                        "Robust (top) and clean (bottom) accuracy against each searched value: where the good "
                        "trials lie, and whether the space's bounds cut them off."),
    "schedules": ("The schedules the population followed",
                  "A PBT search's searched values per epoch, one line per trial: every few epochs the weaker trials "
                  "took the state of stronger ones (ringed, dotted from the parent) and went on with perturbed "
                  "values."),
    "importances": ("Hyperparameter importance",
                    "How much of the variation in the first objective (robust validation accuracy) each searched key "
                    "explains: Optuna's fANOVA, measured steadier than PED-ANOVA at these trial counts; below about "
                    "20 trials a rough guide (benchmarks/importance.py)."),
    "cost": ("Accuracy against cost",
             "Each trial's accuracy against the compute it used: trials stopped early sit on the left."),
}

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 1.5em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.summary { font-size: 1.05em; } .path { color: #666; font-size: 0.85em; word-break: break-all; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; font-size: 0.85em; }
th, td { padding: 0.25em 0.35em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; white-space: normal; vertical-align: bottom; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { color: #444; font-size: 0.9em; max-width: 60em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _percent(column: str) -> bool:
    return column.endswith(("_acc", "_se"))


def _header(column: str) -> str:
    """A readable column heading: accuracies in percent, test columns named by their attack."""
    names = {"trial_id": "trial", "method.name": "method", "clean_acc": "clean %", "robust_acc": "robust %",
             "kept_epoch": "epoch kept", "kept_clean_acc": "clean %", "kept_robust_acc": "robust %",
             "kept_robust_se": "± SE", "epochs": "epochs run",
             "cpu_seconds": "CPU s", "gpu_seconds": "GPU s", "test_robust_acc": "test worst case %"}
    if column in names:
        return names[column]
    if column.startswith("test_") and _percent(column):
        return f"test {column[len('test_'):-len('_acc')].replace('_', '-')} %"
    return column.split(".", 1)[-1].replace("_", " ") if column.startswith(("method.", "attack.", "train.")) else column


def _table(frame: pd.DataFrame) -> str:
    """A table people read: percentages to one decimal, empty cells where nothing was measured, columns
    that hold nothing (no value, or no GPU-second) left out."""
    unmeasured = [c for c in frame.columns
                  if frame[c].isna().all() or (c.endswith("_seconds") and frame[c].fillna(0).eq(0).all())]
    frame = frame.drop(columns=unmeasured)
    shown = pd.DataFrame({_header(c): frame[c].map(lambda v, c=c: _cell(c, v)) for c in frame.columns})
    if "kept_robust_se" in frame:  # one cell, "robust % ± SE": the leaderboard of a wide space fits a laptop's page
        shown["robust %"] = [f"{r} ± {s}" if s else r for r, s in zip(shown["robust %"], shown.pop("± SE"))]
        shown = shown.rename(columns={"robust %": "robust % ± SE"})
    return f"<div class='scroll'>{shown.to_html(index=False, border=0, escape=True)}</div>"


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if _percent(column):
        return f"{100 * value:.1f}"
    if column.endswith("_seconds"):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("_", " ") if column == "status" else str(value)


def _summary(trials: pd.DataFrame) -> str:
    config = json.loads(trials.config.dropna().iloc[0])
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in trials.status.value_counts().items())
    best = trials.dropna(subset=["kept_robust_acc"]).sort_values("kept_robust_acc", ascending=False).head(1)
    gpu, cpu = trials.gpu_seconds.sum(), trials.cpu_seconds.sum()
    seconds, unit = (gpu, "GPU") if gpu > 0 else (cpu, "CPU")
    cost = f"{seconds / 3600:.1f} {unit}-hours" if seconds >= 3600 else f"{seconds:.0f} {unit}-seconds"
    line = (f"{len(trials)} trials of {config['method']['name']} on {config['data']['name']} with "
            f"{config['model']['name']}, {config['train']['epochs']} epochs each ({counts}); searched "
            f"{', '.join(analysis.searched(trials)) or 'nothing'}; {cost}.")
    if not best.empty:
        row = best.iloc[0]
        known = "kept_robust_se" in best and row.kept_robust_se == row.kept_robust_se  # NaN: a table of before
        se = f" ± {100 * row.kept_robust_se:.1f}" if known else ""
        line += (f" Best robust validation accuracy {100 * row.kept_robust_acc:.1f}%{se} (clean "
                 f"{100 * row.kept_clean_acc:.1f}%), trial {row.trial_id} at epoch {row.kept_epoch}.")
    return html.escape(line)


def _png(figure, out: str, key: str) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    storage.write_bytes(storage.join(out, f"{key}.png"), buffer.getvalue())
    print(f"[report] {key}.png", flush=True)


def _figure(key: str, heading: str, caption: str) -> str:
    return (f"<h2>{heading}</h2><figure><img src='{key}.png' alt='{html.escape(heading)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def comparison_page(folder: str) -> str:
    """The page of a `raygap.compare` folder: each arm's test figures, the paired differences with their
    intervals, the figures, each tuned arm's hyperparameter importance, and where each arm's search lies."""
    arms, differences, _ = analysis.load_comparison(folder)
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    out = layout.report(folder)
    board = analysis.arm_summary(arms).reset_index()
    shown = differences.assign(measure=differences.measure.replace("robust", "worst case"),
                               difference=differences.difference.map(analysis.points),
                               interval=[f"[{analysis.points(lo)}, {analysis.points(hi)}]"
                                         for lo, hi in zip(differences.low, differences.high)])
    seeds, n = arms.seed.nunique(), int(arms.examples.iloc[0])
    tuned = arms[arms.tuned]
    summary = (f"{tuned.arm.nunique()} methods searched at the same budget ({int(tuned.trials.iloc[0])} trials each),"
               f" {arms[~arms.tuned].arm.nunique()} untuned, over {seeds} seed{'s' * (seeds > 1)}; every "
               f"finalist attacked on the same {n} test images.")
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>raygap comparison {html.escape(name)}</title>",
            f"<style>{STYLE}</style></head><body>", f"<h1>raygap comparison {html.escape(name)}</h1>",
            f"<p class='summary'>{html.escape(summary)}</p>", f"<p class='path'>{html.escape(folder)}</p>",
            "<h2>Each arm's finalist on the test images</h2>",
            "<p>Test accuracy in percent (the mean over seeds), clean, under each final attack and in the worst case "
            "per example over all of them; trials, epochs and compute summed over the seeds' searches.</p>",
            _table(board),
            "<h2>Paired differences</h2>",
            f"<p>a - b in percentage points on the same {n} test images, with the 95% interval of a paired bootstrap "
            "over the images" + (" and the seeds" if seeds > 1 else "") + ". An interval that includes 0 does not "
            "tell the two apart.</p>",
            _table(shown[["a", "b", "measure", "difference", "interval"]])]
    _png(analysis.plot_comparison(arms, differences), out, "comparison")
    page.append(_figure("comparison", "Accuracy and paired differences",
                        "Left: each arm's test accuracy (bars: mean over seeds; dots: each seed). Right: each paired "
                        "difference in the worst case with its 95% interval; the line marks no difference."))
    if arms.tuned.any():
        _png(analysis.plot_arm_importances(folder, arms), out, "importances")
        page.append(_figure("importances", "What each search's keys explain", FIGURES["importances"][1]))
    commands = [f"python -m raygap.report storage={folder} name={experiment}"
                for experiment in dict.fromkeys(arms[arms.tuned].experiment)]
    page += ["<h2>Each arm's search</h2><p>Each tuned arm is a search of its own, with its report:</p>",
             f"<pre>{html.escape(chr(10).join(commands))}</pre>",
             "<p>The tables in pandas: <code>raygap.analysis.load_comparison(folder)</code> returns the arms, the "
             "differences and the examples (which test image each arm got right under each attack).</p>",
             "</body></html>"]
    storage.write_bytes(storage.join(out, "index.html"), "\n".join(page).encode())
    return storage.join(out, "index.html")


def run(cfg) -> str:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed

    try:
        named = layout.experiment(cfg.storage, cfg.name) if cfg.name else None
        experiment_dir = named or analysis.latest_experiment(cfg.storage)
        if storage.exists(layout.table(experiment_dir, "arms")):
            return comparison_page(experiment_dir)
        trials, epochs = analysis.load(experiment_dir)
    except OSError as err:  # not found, or a storage that cannot be reached (pyarrow's errors are OSErrors)
        raise UserError(f"{' '.join(str(err).split())} (check name= and storage=)") from None
    out = layout.report(experiment_dir)
    name = experiment_dir.rstrip("/").rsplit("/", 1)[-1]
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>raygap search {html.escape(name)}</title>",
            f"<style>{STYLE}</style></head><body>", f"<h1>raygap search {html.escape(name)}</h1>",
            f"<p class='summary'>{_summary(trials)}</p>", f"<p class='path'>{html.escape(experiment_dir)}</p>",
            "<p>Accuracies in percent: clean and robust on the validation split at the epoch each trial exported "
            "(the best robust one, or the last with train.keep=last), ± its standard error; test "
            "columns on the test split, for the finalists only (each final attack, and the worst case, per example, "
            "over all of them). Empty cells were not measured.</p>"]
    board = analysis.leaderboard(trials)
    page += ["<h2>Leaderboard</h2>", _table(board.head(20)),
             "<h2>Pareto front of clean and robust accuracy</h2>", _table(analysis.pareto_front(trials)[board.columns])]
    for key, figure in analysis.figures(experiment_dir, trials, epochs).items():
        _png(figure, out, key)
        page.append(_figure(key, *FIGURES[key]))
    with_study = study.exists(cfg.tune.optuna_storage, experiment_dir)
    opening = analysis.how_to_open(experiment_dir, cfg.tune.optuna_storage, with_study)
    study_first = ("The Optuna study in optuna-dashboard (<code>pip install -e \".[dashboard]\"</code>), then the "
                   "tables" if with_study else "The tables")
    page += [f"<h2>Open the search elsewhere</h2><p>{study_first} in pandas and DuckDB:</p>",
             f"<pre>{html.escape(chr(10).join(opening))}</pre>",
             "</body></html>"]
    storage.write_bytes(storage.join(out, "index.html"), "\n".join(page).encode())
    return storage.join(out, "index.html")


def main():
    entry_point(run, last_line=str, doc=__doc__)


if __name__ == "__main__":
    main()
