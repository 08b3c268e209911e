"""The analysis without Jupyter: `python -m raygap.report [name=EXPERIMENT] [storage=...]`.

Writes the figures of notebooks/analyze_trials.ipynb as PNG files and an HTML summary (counts, cost,
leaderboard, Pareto front, figures) to `${storage}/${name}/report/`. Without `name`, the experiment
under `storage` that changed last.
"""

from __future__ import annotations

import html
import io

from raygap import analysis, storage
from raygap.errors import UserError


def run(cfg) -> str:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    try:
        experiment_dir = storage.join(cfg.storage, cfg.name) if cfg.name else analysis.latest_experiment(cfg.storage)
        trials, epochs = analysis.load(experiment_dir)
    except FileNotFoundError as err:
        raise UserError(f"{err} (check name= and storage=)") from None
    out = storage.join(experiment_dir, "report")
    images = []
    for name, figure in analysis.figures(experiment_dir, trials, epochs).items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        plt.close(figure)
        storage.write_bytes(storage.join(out, f"{name}.png"), buffer.getvalue())
        images.append(name)
        print(f"[report] {name}.png", flush=True)

    counts = ", ".join(f"{n} {s}" for s, n in trials.status.value_counts().items())
    board = analysis.leaderboard(trials)
    table = {"float_format": "{:.4g}".format, "index": False, "border": 0}
    page = [f"<html><head><meta charset='utf-8'><title>raygap: {html.escape(experiment_dir)}</title></head><body>",
            f"<h1>{html.escape(experiment_dir)}</h1>",
            f"<p>{len(trials)} trials ({counts}); cost {trials.cpu_seconds.sum():.0f} CPU-seconds, "
            f"{trials.gpu_seconds.sum():.0f} GPU-seconds. Validation accuracy at the last epoch; test_* columns "
            f"on the test split (finalists only): each final attack's accuracy, and test_robust_acc, the per-example "
            f"worst case over all of them.</p>",
            "<h2>Leaderboard</h2>", board.head(20).to_html(**table),
            "<h2>Pareto front of clean vs robust accuracy</h2>", analysis.pareto_front(trials)[board.columns].to_html(**table),
            *(f"<h2>{name.replace('_', ' ')}</h2><img src='{name}.png'>" for name in images), "</body></html>"]
    storage.write_bytes(storage.join(out, "index.html"), "\n".join(page).encode())
    return storage.join(out, "index.html")


def main():
    from raygap.cli import entry_point

    entry_point(run, last_line=str, doc=__doc__)


if __name__ == "__main__":
    main()
