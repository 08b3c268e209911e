"""The evaluation a paper would report: the standard AutoAttack, per-example worst case, RobustBench's model_info."""

import json
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers import run_cli
from raygap import checkpoint, data
from raygap.attacks import AUTOATTACK, AutoAttackLog, make_attack, standard_autoattack
from raygap.schema import ModelInfoConfig
from raygap.robustness import model_info, worst_case

ATTACKS = ["clean", "fgsm", "pgd20", "cw", "apgd-ce", "apgd-t", "autoattack"]
N = 100  # test digits: few, to keep the suite's time; the tolerances below are for this many


@pytest.fixture(scope="module")
def evaluated(natural_digits, tmp_path_factory):
    """One real `python -m raygap.evaluate` of the natural digits model with every kind of attack."""
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    proc = run_cli("evaluate", f"checkpoint={natural_digits[1]}", f"eval.attacks=[{','.join(ATTACKS)}]",
                   f"eval.n={N}", f"eval.out={out}")
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def robustbench(natural_digits, tmp_path_factory):
    """RobustBench's files are for the whole test split (eval.n=0; part of it is refused, test_cli.py). At a
    budget of 0.25 APGD-CE breaks every digit of the natural model, so AutoAttack's other three attacks have
    none left to run on (at 8/255 they take two minutes of the suite on the survivors)."""
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    proc = run_cli("evaluate", f"checkpoint={natural_digits[1]}", "eval.attacks=[clean,autoattack]", "eval.n=0",
                   "eval.eps=0.25", f"eval.out={out}", "eval.format=robustbench", "eval.info.name=A natural model")
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), json.loads(out.with_suffix(".model_info.json").read_text())


@pytest.mark.slow
def test_the_autoattack_that_runs_is_the_standard_version(natural_digits):
    model, _ = checkpoint.load(natural_digits[1])
    driver = standard_autoattack(model, eps=8 / 255, norm="linf", num_classes=10, seed=0, device="cpu")
    assert driver.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (driver.apgd.n_iter, driver.apgd.n_restarts, driver.apgd.loss) == (100, 1, "ce")
    targeted = driver.apgd_targeted
    assert (targeted.n_iter, targeted.n_restarts, targeted.n_target_classes) == (100, 1, 9)
    assert (driver.fab.n_iter, driver.fab.n_restarts, driver.fab.n_target_classes) == (100, 1, 9)
    assert (driver.square.n_queries, driver.square.p_init, driver.square.rescale_schedule) == (5000, 0.8, False)
    assert driver.epsilon == 8 / 255 and driver.norm == "Linf"
    # CIFAR-100: the standard 9 target classes (torchattacks took n_classes - 1 = 99)
    hundred = standard_autoattack(model, eps=8 / 255, norm="linf", num_classes=100, seed=0, device="cpu")
    assert hundred.apgd_targeted.n_target_classes == hundred.fab.n_target_classes == 9
    # fewer than 10 classes: every other class is a target (the one departure, documented in attacks.py)
    five = standard_autoattack(model, eps=8 / 255, norm="linf", num_classes=5, seed=0, device="cpu")
    assert five.apgd_targeted.n_target_classes == five.fab.n_target_classes == 4
    # the evaluation names build that driver: all four attacks, or one of them at the same settings
    assert make_attack("autoattack", eps=0.1).keywords["attacks"] == AUTOATTACK
    assert make_attack("apgd-t", eps=0.1, num_classes=100).keywords["attacks"] == ("apgd-t",)


def test_worst_case_counts_an_example_only_if_it_survives_every_attack():
    # class 1 where the pixel is bright: all four examples are class 1 and classified correctly
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [2.0]]))
        model.bias.copy_(torch.tensor([0.0, -1.0]))
    split = data.Split(torch.full((4, 1, 1, 1), 255, dtype=torch.uint8).flatten(1), torch.ones(4, dtype=torch.long))

    def darken(part):  # an attack that breaks only its half of the examples
        def attack(model, x, y):
            x = x.clone()
            x[part] = 0
            return x
        return attack

    report = worst_case(model, split, {"clean": None, "first": darken(slice(0, 2)), "second": darken(slice(2, 4))},
                        batch_size=4, seed=0, progress=lambda line: None)
    assert report["accuracy"] == {"clean": 1.0, "first": 0.5, "second": 0.5}
    assert report["robust"] == 0.0  # the minimum of the accuracies would say 0.5


def test_an_attack_over_several_batches_reports_each_with_an_eta():
    model = nn.Linear(1, 2)  # class 1 where the pixel is bright, as above
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [2.0]]))
        model.bias.copy_(torch.tensor([0.0, -1.0]))
    split = data.Split(torch.full((5, 1), 255, dtype=torch.uint8), torch.ones(5, dtype=torch.long))
    attacks = {"clean": None, "black": lambda model, x, y: torch.zeros_like(x)}
    for batch_size, expected in ((5, []), (2, ["2 of 5", "4 of 5"])):
        lines = []
        report = worst_case(model, split, attacks, batch_size=batch_size, seed=0, progress=lines.append)
        assert report["accuracy"] == {"clean": 1.0, "black": 0.0} and report["robust"] == 0.0
        batches = [line for line in lines if "eta" in line]
        assert [line.split()[1] + " of " + line.split()[3] for line in batches] == expected, lines
        assert all(line.split()[0] == "black" for line in batches)  # clean is not attacked in batches


@pytest.mark.slow
def test_the_json_has_each_attack_the_worst_case_and_how_it_was_run(evaluated):
    proc, result = evaluated
    assert proc.stdout.strip().splitlines()[-1].endswith("eval.json")
    assert result["method"] == "natural"  # from the checkpoint, not the config's default method
    assert (result["precision"], result["seed"], result["n_examples"]) == ("fp32", 0, N)
    assert result["threat_model"] == "Linf" and result["architecture"] == "smallcnn"
    accuracies = [result[f"{name.replace('-', '_')}_acc"] for name in ATTACKS]
    assert result["robust_acc"] <= min(accuracies)
    assert result["attacked"] == round(result["clean_acc"] * N)
    assert f"attacking the {result['attacked']} of {N} examples classified correctly" in proc.stdout
    assert "APGD-T 100 iterations x 9 target classes" in result["attacks"]["autoattack"]
    assert "Square 5000 queries" in result["attacks"]["autoattack"]
    assert set(result["seconds"]) == set(ATTACKS) and isinstance(result["warnings"], list)


@pytest.mark.slow
def test_stronger_attacks_find_more_on_a_natural_model(evaluated):
    _, r = evaluated
    # AutoAttack starts with the same APGD-CE (same seed, same points), so it can only do better
    assert r["autoattack_acc"] <= r["apgd_ce_acc"] and r["autoattack_acc"] <= r["apgd_t_acc"]
    # APGD-CE's 100 adaptive steps against PGD-20's 20 fixed ones: not per example, so allow 2 of 100
    # examples that PGD-20's other random start happens to break
    assert r["apgd_ce_acc"] <= r["pgd20_acc"] + 0.02
    assert r["autoattack_acc"] <= r["pgd20_acc"] <= r["fgsm_acc"] < r["clean_acc"]
    assert r["robust_acc"] <= r["autoattack_acc"]


@pytest.mark.slow
def test_standard_autoattack_is_no_weaker_than_torchattacks_port(evaluated, natural_digits):
    torchattacks = pytest.importorskip(
        "torchattacks", reason="torchattacks is not a dependency (it pins requests 2.25); pip install --no-deps "
                               "torchattacks to compare")
    cfg, path = natural_digits
    model, _ = checkpoint.load(path)
    model.requires_grad_(False)
    test = data.load(cfg.data).test
    x, y = data.to_float(test.x[:N]), test.y[:N]
    old = torchattacks.AutoAttack(model, norm="Linf", eps=cfg.eval.eps, version="standard", n_classes=10, seed=0)
    with torch.no_grad():
        old_acc = (model(old(x, y)).argmax(1) == y).float().mean().item()
    # different attacks with different random starts: not per example, so allow 1 of 100
    assert evaluated[1]["autoattack_acc"] <= old_acc + 0.01


@pytest.mark.slow
def test_model_info_is_robustbench_format(robustbench):
    result, info = robustbench
    assert result["n_examples"] == 359  # all of the digits' test split
    assert list(info) == ["link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                          "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "unreliable"]
    assert info["name"] == "A natural model" and info["link"] == "" and info["dataset"] == "digits"
    assert info["eps"] == "0.25"  # a budget that is not k/255 is written as the number
    assert info["additional_data"] is False and info["unreliable"] is False and info["number_forward_passes"] == 1
    for key in ("clean_acc", "reported", "autoattack_acc"):
        assert re.fullmatch(r"\d{1,3}\.\d\d", info[key]), info[key]
    # read as RobustBench's list_available_models reads its files
    assert float(info["autoattack_acc"]) / 100 == pytest.approx(result["autoattack_acc"], abs=5e-5)
    assert float(info["clean_acc"]) / 100 == pytest.approx(result["clean_acc"], abs=5e-5)
    # a CIFAR-10 figure, with the paper's reported number as the command line gives it (a float)
    cifar = model_info({**result, "dataset": "cifar10", "architecture": "wrn34_10", "eps": 8 / 255},
                       ModelInfoConfig(name="AFD", venue="AAAI 2025", reported="47.4"))
    assert (cifar["eps"], cifar["architecture"], cifar["reported"]) == ("8/255", "WideResNet-34-10", "47.40")


@pytest.mark.slow
def test_a_model_that_trips_autoattacks_checks_is_flagged_and_its_progress_shown(natural_digits):
    cfg, path = natural_digits
    model, _ = checkpoint.load(path)
    softmax = nn.Sequential(model, nn.Softmax(dim=1)).requires_grad_(False)  # probabilities, not logits
    test = data.load(cfg.data).test
    split = data.Split(test.x[:20], test.y[:20])
    progress = []
    with AutoAttackLog(progress.append) as warnings:
        worst_case(softmax, split, {"apgd-ce": make_attack("apgd-ce", eps=0.1)}, batch_size=20, seed=0,
                   progress=lambda line: None)
    assert any("probability distribution" in w for w in warnings), warnings
    assert len(progress) == 1 and "after APGD-CE" in progress[0], progress  # the authors' own progress line


@pytest.mark.slow
def test_eval_n_beyond_the_test_split_evaluates_all_of_it(natural_digits, tmp_path):
    out = tmp_path / "eval.json"
    proc = run_cli("evaluate", f"checkpoint={natural_digits[1]}", "eval.attacks=[clean,fgsm]", "eval.n=100000",
                   f"eval.out={out}")
    assert proc.returncode == 0, proc.stderr
    assert "eval.n=100000 is more than the 359 test examples of digits: evaluating all 359" in proc.stdout
    assert json.loads(out.read_text())["n_examples"] == 359


@pytest.mark.slow
def test_a_missing_autoattack_install_is_one_line(natural_digits, tmp_path):
    out = tmp_path / "eval.json"
    # pyautoattack made unimportable, as in an environment installed without it
    code = ("import sys; sys.modules['pyautoattack'] = None; sys.argv[1:] = sys.argv[2:]; "
            "from raygap.evaluate import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "-", f"checkpoint={natural_digits[1]}",
                           "eval.attacks=[clean,autoattack]", f"eval.out={out}"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "AutoAttack is not installed: pip install pyautoattack==0.2.0" in proc.stderr
    assert not out.exists()
