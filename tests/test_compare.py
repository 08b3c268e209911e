"""Defences compared at an equal budget: the paired interval, bad input, and a short real comparison on digits
(its tables read back, the report's comparison page, the notebook's comparison section on a real kernel)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import nbformat
import pandas as pd
import pytest
import ray
from nbclient import NotebookClient

from raygap import analysis, compare, results
from raygap.config import load
from raygap.compare import own_space, plan
from raygap.recorder import LOST

from helpers import run_cli, run_main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "analyze_trials.ipynb"


def test_a_strict_superset_of_correct_examples_gives_an_interval_above_zero():
    rng = np.random.default_rng(1)
    b = rng.random(300) < 0.4
    a = b | (rng.random(300) < 0.1)  # right wherever b is, and on some more
    diff, low, high = analysis.paired_interval(a, b, resamples=4000)
    assert diff == pytest.approx(a.mean() - b.mean()) and diff > 0
    assert 0 < low < diff < high
    # the same difference unpaired (b's examples shuffled) is far less certain: pairing is what narrows it
    assert high - low < 0.5 * (analysis.paired_interval(a, rng.permutation(b), resamples=4000)[2] -
                               analysis.paired_interval(a, rng.permutation(b), resamples=4000)[1])


def test_identical_masks_give_a_zero_width_interval_and_seeds_widen_it():
    a = np.random.default_rng(2).random((2, 200)) < 0.6
    assert analysis.paired_interval(a, a, resamples=1000) == (0.0, 0.0, 0.0)
    # two seeds that disagree: resampling the seeds adds their spread to the interval
    better = a.copy()
    better[0, :40] = True
    one = analysis.paired_interval(better[:1], a[:1], resamples=2000)
    both = analysis.paired_interval(better, a, resamples=2000)
    assert both[1] <= 0 < one[1]  # seed 1 shows no difference, so over both seeds 0 stays inside


def test_each_method_is_searched_over_its_own_keys_at_the_same_budget(tmp_path):
    cfg = load([f"storage={tmp_path}", "compare.methods=[vaft,afd,trades]", "compare.seeds=[0,1]",
                "compare.untuned=[afd]"], "defences")
    arms = plan(cfg, "defences")
    assert [(a.method, a.tuned, a.seed) for a in arms] == [
        ("vaft", True, 0), ("afd", True, 0), ("trades", True, 0), ("afd", False, 0),
        ("vaft", True, 1), ("afd", True, 1), ("trades", True, 1), ("afd", False, 1)]
    shared = {"train.lr", "train.weight_decay", "attack.eps"}
    spaces = {a.method: set(a.cfg.tune.space) for a in arms if a.tuned}
    assert spaces == {"vaft": shared, "afd": shared | {"method.alpha", "method.sigma", "method.align_weight"},
                      "trades": shared | {"method.beta"}}
    for arm in arms:  # the same budget, the seed for the searcher and training, the finalist on validation
        assert (arm.cfg.tune.num_samples, arm.cfg.train.epochs, arm.cfg.tune.scheduler.name) == (8, 6, "asha")
        assert arm.cfg.tune.seed == arm.cfg.train.seed == arm.seed and arm.cfg.final_eval.top_k == 1
    assert arms[2].cfg.method.beta == 1.0  # TRADES at its digits default (data_method/digits_trades.yaml)
    assert own_space({"x": {"type": "choice", "values": [1], "when": {"method": ["afd"], "y": [2]}}}, "afd") == \
        {"x": {"type": "choice", "values": [1], "when": {"y": [2]}}}


DATA_SEARCHED = """
defaults: [defences, _self_]
tune:
  space:
    data.val_fraction: {type: uniform, low: 0.1, high: 0.2, when: {method: [afd]}}
"""
FOREIGN_KEY = """
defaults: [defences, _self_]
tune:
  space:
    method.gamma: {type: uniform, low: 1, high: 2, when: {method: [afd]}}
"""


@pytest.mark.parametrize("args, message", [
    (["methods=[afd]"], "compare.methods names one method (afd); a comparison needs two or more"),
    (["methods=[afd,nope]"], "compare.methods: 'nope' is unknown"),
    (["methods=[afd,drrdn]"], "'drrdn' is not among the methods search space 'defences' offers"),
    (["tune.num_samples=0"], "tune.num_samples and tune.max_concurrent must be >= 1"),
    (["seeds=[]"], "compare.seeds is empty"),
    (["untuned=[mart]"], "compare.untuned: 'mart' is not compared"),
    (["search=afd"], "does not search `method` as a choice"),
    (["search=data.yaml"], "tune.space.data.val_fraction: a comparison gives every method the same data"),
    (["search=foreign.yaml"], "tune.space.method.gamma names a key that does not exist"),
])
def test_bad_comparisons_are_one_line_and_exit_2_before_anything_starts(tmp_path, monkeypatch, args, message):
    (tmp_path / "data.yaml").write_text(DATA_SEARCHED)
    (tmp_path / "foreign.yaml").write_text(FOREIGN_KEY)
    storage = tmp_path / "results"
    monkeypatch.chdir(tmp_path)
    proc = run_main("compare", f"storage={storage}", *args)  # the command's main() in this process
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not storage.exists() and not ray.is_initialized()  # nothing written, no Ray started


SHORT = ["methods=[vaft,afd]", "untuned=[afd]", "tune.num_samples=2", "train.epochs=2", "tune.scheduler.grace_period=1",
         "final_eval.n=60", "final_eval.attacks=[clean,pgd20]", "eval.val_n=100"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, natural_digits):
    storage = tmp_path_factory.mktemp("compare")
    args = [f"storage={storage}", f"pretrained={natural_digits[1]}", "name=short", *SHORT]
    proc = run_cli("compare", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return storage / "short", proc, args


def test_a_search_that_lost_trials_is_named_under_the_comparison_table(capsys):
    """A failed trial shrinks its search's budget (a CIFAR-10 PBT member lost its donor's checkpoint): the
    printout says which search, by how much and where the reason is, so the table is not read as equal."""
    rows = [{"arm": "afd, PBT schedule", "seed": 1, "trials": 8, "failed": 1, "epochs": 29,
             "experiment": "afd-pbt-seed1"},
            {"arm": "afd, best fixed schedule", "seed": 1, "trials": 8, "failed": 0, "epochs": 32,
             "experiment": "afd-fixed-seed1"}]
    arms = pd.DataFrame([{**r, "cpu_seconds": 10.0, "gpu_seconds": 0.0, "test_clean_acc": 0.46,
                          "test_robust_acc": 0.21} for r in rows])
    differences = pd.DataFrame([{"a": rows[0]["arm"], "b": rows[1]["arm"], "measure": "robust", "difference": 0.001,
                                 "low": -0.011, "high": 0.012, "examples": 1000}])
    compare.print_tables(arms, differences, [1])
    out = capsys.readouterr().out
    assert "1 of 8 trials of afd, PBT schedule at seed 1 failed" in out and "(29 epochs)" in out, out
    assert "afd-pbt-seed1/trials" in out and "fixed schedule at seed 1 failed" not in out


@pytest.mark.slow
def test_a_short_comparison_searches_each_method_at_the_same_budget_on_the_same_test_images(comparison, tmp_path):
    folder, proc, args = comparison
    assert proc.stdout.strip().splitlines()[-1] == str(folder)
    arms, differences, examples = analysis.load_comparison(str(folder))
    assert list(arms.arm) == ["vaft (tuned)", "afd (tuned)", "afd (untuned)"]
    # equal budget: each search ran the same number of trials, each trial for the same number of epochs
    for experiment in ["vaft-tuned-seed0", "afd-tuned-seed0"]:
        trials = results.read_table(folder / experiment, "trials")
        assert len(trials) == 2 and set(trials["train.epochs"]) == {2} and trials.finalist.sum() == 1
        assert set(trials["method.name"]) == {experiment.split("-")[0]}
    assert set(arms.trials) == {2, 1} and (arms.trials[arms.tuned] == 2).all()
    # the same 60 test images for every arm, and the arms' figures are the examples' means
    by_arm = {name: part.sort_values("example") for name, part in examples.groupby("experiment")}
    assert len(by_arm) == 3 and all(len(part) == 60 for part in by_arm.values())
    labels = [part.label.tolist() for part in by_arm.values()]
    assert labels[0] == labels[1] == labels[2]
    for row in arms.itertuples():
        part = by_arm[row.experiment]
        assert row.test_pgd20_acc == pytest.approx(part.correct_pgd20.mean())
        assert row.test_robust_acc <= row.test_clean_acc
        assert (part.correct_robust <= part.correct_clean).all()
    # every pair of arms, each measure, with an interval around its difference
    assert len(differences) == 3 * 3 and (differences.low <= differences.difference).all()
    assert (differences.difference <= differences.high).all()
    assert "paired differences a - b" in proc.stdout and "most robust (worst case" in proc.stdout
    # run again from the Parquet tables alone, as on a new machine that kept only them (no checkpoints, no
    # journal, no natural model): every arm is kept, nothing is trained, and the tables are the same
    kept = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "keep_tables.py"), str(folder.parent),
                           str(tmp_path)], capture_output=True, text=True)
    assert kept.returncode == 0 and "files copied" in kept.stdout, kept.stderr
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.journal"))
    elsewhere = [a for a in args if not a.startswith(("storage=", "pretrained="))]
    again = run_cli("compare", f"storage={tmp_path}", *elsewhere)
    assert again.returncode == 0 and "] epoch " not in again.stdout, again.stderr[-2000:]
    assert again.stdout.count("evaluated before, kept") == 3 and not (tmp_path / "pretrained").exists()
    pd.testing.assert_frame_equal(results.read_table(tmp_path / "short", "arms"), arms)


@pytest.mark.slow
def test_a_comparison_whose_machine_was_lost_mid_search_goes_on_from_what_keep_tables_kept(natural_digits, tmp_path):
    """The long real-data comparisons outlive their machines through keep_tables' copies: a search cut short
    goes on from its study, its tables and the models it may evaluate, in another storage folder. The machine
    is lost at the worst moment: a trial has ended and the study was told, but its row still says running."""
    lost, kept_copy = tmp_path / "lost", tmp_path / "kept"
    args = ["name=cut", "methods=[vaft,afd]", "untuned=[]", "tune.num_samples=3", "tune.max_concurrent=2",
            "train.epochs=1", "tune.scheduler.name=fifo", "final_eval.n=40", "final_eval.attacks=[clean,pgd20]",
            "eval.val_n=100"]
    command = [sys.executable, "-m", "raygap.compare", f"storage={lost}", f"pretrained={natural_digits[1]}", *args]
    driver = subprocess.run(command, env=dict(os.environ, RAY_AUTH_MODE="disabled", RAYGAP_TEST_CRASH="trial_ended"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, timeout=600)
    assert driver.returncode == -9  # the driver, Ray and the trials at once
    search = lost / "cut" / "vaft-tuned-seed0"
    before = results.read_table(search, "trials")
    assert not before.empty and (before.status == "running").all()

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "keep_tables.py"), str(lost), str(kept_copy)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    kept = {str(p.relative_to(kept_copy)) for p in kept_copy.rglob("*") if p.is_file()}
    models = {p for p in kept if p.endswith(".pt")}  # of the trials that had trained, whichever ended
    assert models and models <= {f"cut/vaft-tuned-seed0/runs/{t}/model.pt" for t in before.trial_id}
    assert "cut/vaft-tuned-seed0/optuna.journal" in kept and not any("experiment_state" in p for p in kept)

    first = tmp_path / "first"
    shutil.copytree(kept_copy, first)
    again = run_cli("compare", f"storage={kept_copy}", f"pretrained={natural_digits[1]}", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "of 3 trials are done; a new Tune run over the same study runs the other" in again.stdout
    trials = results.read_table(kept_copy / "cut" / "vaft-tuned-seed0", "trials")
    assert (trials.status == "completed").sum() == 3 and (trials[trials.status != "completed"].error == LOST).all()
    # the trial that ended as the machine was lost counts, with its model, as the study holds it
    settled = trials[trials.trial_id.isin(before.trial_id) & (trials.status == "completed")]
    assert len(settled) >= 1 and {f"cut/vaft-tuned-seed0/runs/{t}/model.pt" for t in settled.trial_id} <= models
    arms = results.read_table(kept_copy / "cut", "arms")
    assert list(arms.trials) == [3, 3]  # the same budget for both arms, the lost trial not counted
    # kept again over the first copy once evaluated: the model kept to go on is no longer needed there
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "keep_tables.py"), str(kept_copy), str(first)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "models no longer needed removed" in proc.stdout, proc.stdout + proc.stderr
    assert not list(first.rglob("*.pt")) and len(list(first.glob("cut/*/examples/*.parquet"))) == 2


@pytest.mark.slow
def test_the_report_and_the_notebook_show_the_comparison(comparison, tmp_path):
    folder = comparison[0]
    proc = run_cli("report", f"storage={folder.parent}", f"name={folder.name}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (folder / "report" / "index.html").read_text()
    for text in ["raygap comparison short", "Paired differences", "vaft (tuned)", "afd (untuned)", "comparison.png",
                 "importances.png"]:
        assert text in page
    assert (folder / "report" / "comparison.png").stat().st_size > 5000

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells[1].source = f"experiment = '{folder / 'afd-tuned-seed0'}'\ncomparison = '{folder}'"
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "afd (tuned) vs afd (untuned): right only for" in text and "McNemar p =" in text
