"""The analysis of a real search: the notebook on a real Jupyter kernel, the report command, the helpers."""

import base64
import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.request import urlopen

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from raygap import analysis, study
from helpers import free_port, run_cli, wait_for_port

pytestmark = pytest.mark.slow  # searches, then a real kernel and a dashboard read them back

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
    for part in (older / "trials").iterdir():
        os.utime(part, (0, 0))
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
        assert f"<img src='{name}.png'" in page
    trials = pd.read_parquet(experiment_dir / "trials")
    assert all(trial_id in page for trial_id in trials.trial_id)  # the leaderboard lists every trial


CHROMIUM = shutil.which("chromium")
# as this machine's probe runs it: without the background networking a closed network refuses
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (apt install chromium; .ci/run has it)")
def test_the_report_reads_well_in_a_real_browser_1280_pixels_wide(small_search, tmp_path):
    experiment_dir = small_search[0]
    proc = run_cli("report", f"storage={experiment_dir.parent}", "name=small")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = experiment_dir / "report"
    # The page as a browser lays it out: its width, and every table's width against its box
    probe = report / "probe.html"
    probe.write_text((report / "index.html").read_text().replace("</body>", """<script>
      const boxes = [...document.querySelectorAll('.scroll')];
      document.body.dataset.layout = JSON.stringify({page: document.documentElement.scrollWidth,
        tables: boxes.length, cut: boxes.filter(b => b.scrollWidth > b.clientWidth).length});
    </script></body>"""))
    browser = [CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,1600"]
    dom = subprocess.run([*browser, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    layout = json.loads(html.unescape(re.search(r'data-layout="([^"]*)"', dom).group(1)))
    # nothing wider than the window (1280 px less a scroll bar), no table cut off in its box
    assert layout["page"] <= 1280 and layout["tables"] == 2 and layout["cut"] == 0, layout
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", (report / "index.html").as_uri()], capture_output=True,
                   timeout=120)
    assert int.from_bytes(shot.read_bytes()[16:20], "big") == 1280  # the PNG header's width

    text = re.sub(r"<[^>]+>", " ", dom)
    trials = pd.read_parquet(experiment_dir / "trials")
    assert "<title>raygap search small</title>" in dom and "4 trials of afd on digits with smallcnn" in text
    assert "NaN" not in text and "nan" not in text.split()
    best = trials.kept_robust_acc.max()
    assert f"Best robust validation accuracy {100 * best:.1f}%" in text
    for heading in ["Leaderboard", "Clean against robust accuracy", "Learning curves", "Open the search elsewhere"]:
        assert heading in text
    assert "optuna-dashboard" in text and "read_parquet" in text and "duckdb" in text


def test_optuna_dashboard_serves_the_search_s_study_with_the_command_the_report_prints(small_search):
    experiment_dir = small_search[0]
    program, *args = shlex.split(study.dashboard_command("", str(experiment_dir)))
    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / program), *args, "--host", "127.0.0.1",
                                  "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, dashboard, "optuna-dashboard")
        studies = json.loads(urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30).read())["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "small"]
        served = json.loads(urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=30).read())
    finally:
        dashboard.terminate()
        dashboard.wait()
    trials = pd.read_parquet(experiment_dir / "trials")
    assert len(served["trials"]) == len(trials) == 4
    searched = set(analysis.searched(trials))
    assert all({p["name"] for p in t["params"]} == searched for t in served["trials"])
    # the value Optuna holds for each finished trial is the robust accuracy of the epoch it exported
    told = sorted(round(t["values"][0], 6) for t in served["trials"] if t["state"] == "Complete")
    scored = trials[trials.status.isin(["completed", "stopped_early"])]
    assert told == sorted(round(v, 6) for v in scored.kept_robust_acc)


def test_report_of_a_missing_experiment_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("report", f"storage={tmp_path}", "name=nothing")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no trials table" in proc.stderr and not (tmp_path / "nothing").exists()


def test_helpers_read_the_search_as_it_ran(small_search):
    experiment_dir = small_search[0]
    trials, epochs = analysis.load(str(experiment_dir))
    assert analysis.searched(trials) == ["method.disentangler_size", "method.align_weight", "attack.eps",
                                         "method.alpha", "method.sigma", "train.lr", "train.weight_decay"]
    assert analysis.final_attack(trials) == "test_robust_acc"  # the worst case over the finalists' attacks
    importance = analysis.importances(str(experiment_dir))
    assert set(importance.index) <= set(analysis.searched(trials)) and len(importance) >= 1
    assert abs(importance.sum() - 1) < 1e-6
    board = analysis.leaderboard(trials)
    assert list(board.trial_id[:1]) == list(trials.sort_values("kept_robust_acc", ascending=False).trial_id[:1])
    params = [json.loads(p) for p in trials.params]
    assert all(row["train.lr"] == p["train.lr"] for row, p in zip(trials.to_dict("records"), params))
