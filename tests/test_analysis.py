"""The analysis of a real search: the notebook on a real Jupyter kernel, the report command, the helpers."""

import base64
import json
import os
import shutil
from pathlib import Path

import nbformat
import pandas as pd
from nbclient import NotebookClient

from raygap import analysis
from conftest import run_cli

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analyze_trials.ipynb"
FIGURES = ["pareto", "learning_curves", "hyperparameters", "importances", "cost"]


def _png_sizes(outputs):
    return [len(base64.b64decode(o["data"]["image/png"])) for o in outputs if "image/png" in o.get("data", {})]


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in notebook.cells if c.cell_type == "code")
    assert any("parameters" in c.metadata.get("tags", []) for c in notebook.cells)  # papermill can set the path


def test_the_notebook_runs_on_a_real_kernel_over_the_newest_experiment(small_search):
    experiment_dir = small_search[0]
    # an older experiment beside it: the notebook must pick the newest by default
    older = experiment_dir.parent / "older"
    shutil.copytree(experiment_dir / "trials", older / "trials")
    os.utime(older / "trials", (0, 0))
    try:
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(experiment_dir.parent.parent)}}).execute()
    finally:
        shutil.rmtree(older)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "raygap_results/small: 4 trials" in text
    sizes = _png_sizes(outputs)
    assert len(sizes) == len(FIGURES) and min(sizes) > 5000, sizes  # each figure is a real, non-empty image


def test_report_writes_every_figure_and_an_html_summary(small_search):
    experiment_dir = small_search[0]
    proc = run_cli("report", f"storage={experiment_dir.parent}", "name=small")
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = Path(proc.stdout.strip().splitlines()[-1])
    assert index == experiment_dir / "report" / "index.html"
    page = index.read_text()
    for name in FIGURES:
        png = index.parent / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"<img src='{name}.png'>" in page
    trials = pd.read_parquet(experiment_dir / "trials")
    assert all(trial_id in page for trial_id in trials.trial_id)  # the leaderboard lists every trial


def test_report_of_a_missing_experiment_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("report", f"storage={tmp_path}", "name=nothing")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no trials table" in proc.stderr and not (tmp_path / "nothing").exists()


def test_helpers_read_the_search_as_it_ran(small_search):
    experiment_dir = small_search[0]
    trials, epochs = analysis.load(str(experiment_dir))
    assert analysis.searched(trials) == ["method.disentangler_size", "method.align_weight", "attack.eps", "train.lr"]
    assert analysis.final_attack(trials) == "test_robust_acc"  # the worst case over the finalists' attacks
    importance = analysis.importances(str(experiment_dir))
    assert set(importance.index) <= set(analysis.searched(trials)) and len(importance) >= 1
    assert abs(importance.sum() - 1) < 1e-6
    board = analysis.leaderboard(trials)
    assert list(board.trial_id[:1]) == list(trials.sort_values("robust_acc", ascending=False).trial_id[:1])
    params = [json.loads(p) for p in trials.params]
    assert all(row["train.lr"] == p["train.lr"] for row, p in zip(trials.to_dict("records"), params))
