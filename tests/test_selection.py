"""What a run keeps and how it is judged: the best epoch exported (Rice et al.), validation that is paired
across runs (the same images, the same attack seed) and carries its standard error."""

import math

import pytest
import torch

from raygap import checkpoint, data, loop, train
from raygap.config import load

from helpers import run_cli


@pytest.mark.slow
def test_a_run_whose_robust_accuracy_peaks_early_exports_the_peak_epoch(tmp_path, natural_digits):
    # vAFT at a constant rate of 0.2 on digits: robust validation accuracy peaks in epoch 1, then falls
    cfg = load([f"storage={tmp_path}", f"pretrained={natural_digits[1]}", "method=vaft", "train.epochs=3",
                "train.lr=0.2", "train.schedule=constant"])
    result = train.run(cfg)
    history = result["history"]
    kept = history[-1]["kept_epoch"]
    best = max(history, key=lambda r: r["robust_acc"])
    assert kept == best["epoch"] < 3 and best["robust_acc"] > history[-1]["robust_acc"]
    model, payload = checkpoint.load(result["checkpoint"])
    assert payload["meta"]["kept_epoch"] == kept
    # the exported model scores on the validation split what the kept epoch recorded, not the last epoch's
    val = loop.validation(cfg, data.load(cfg.data), 0, 1, torch.device("cpu"))
    clean, robust = val.accuracy(model, [None, val.attack], bf16=False)
    assert (clean, robust) == (best["clean_acc"], best["robust_acc"])
    assert (history[-1]["kept_clean_acc"], history[-1]["kept_robust_acc"]) == (clean, robust)

    last = load([f"storage={tmp_path}", f"pretrained={natural_digits[1]}", "method=vaft", "train.epochs=3",
                 "train.lr=0.2", "train.schedule=constant", "train.keep=last"])
    history = train.run(last)["history"]
    assert [r["kept_epoch"] for r in history] == [1, 2, 3]


@pytest.mark.slow
def test_validation_is_the_same_draw_whatever_ran_before_and_says_its_standard_error(tmp_path, natural_digits):
    cfg = load([f"storage={tmp_path}"])
    model, _ = checkpoint.load(natural_digits[1])
    val = loop.validation(cfg, data.load(cfg.data), 0, 1, torch.device("cpu"))
    figures = []
    for seed in (1, 2):  # the global random state differs: the attack's random start must not
        torch.manual_seed(seed)
        figures.append(val.accuracy(model, [val.attack], bf16=False))
    assert figures[0] == figures[1]
    robust = figures[0][0]
    assert val.standard_error(robust) == pytest.approx(math.sqrt(robust * (1 - robust) / val.n))
    # and the training stream is untouched by it: the generator is where it was before validating
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    val.accuracy(model, [val.attack], bf16=False)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_a_run_killed_after_its_best_epoch_exports_the_same_model_when_resumed(tmp_path, natural_digits):
    early_peak = ["method=vaft", "train.epochs=3", "train.lr=0.2", "train.schedule=constant",
                  f"pretrained={natural_digits[1]}", f"storage={tmp_path}"]
    whole = run_cli("train", *early_peak, "name=whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    env = {"RAYGAP_TEST_KILL": "3:0"}  # the process dies as epoch 3 starts: epochs 1 and 2 are saved
    killed = run_cli("train", *early_peak, "name=killed", env=env)
    assert killed.returncode == -9 and not (tmp_path / "killed" / "model.pt").exists()
    resumed = run_cli("train", *early_peak, "name=killed")
    assert resumed.returncode == 0 and "epoch 1/3" not in resumed.stdout, resumed.stderr[-2000:]
    (a, meta_a), (b, meta_b) = checkpoint.load(str(tmp_path / "whole" / "model.pt")), \
        checkpoint.load(str(tmp_path / "killed" / "model.pt"))
    assert meta_a["meta"]["kept_epoch"] == meta_b["meta"]["kept_epoch"] == 1
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
