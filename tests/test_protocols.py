"""The real-data CIFAR-10 protocols, run tiny on the CPU on the shipped sample of real CIFAR-10 images."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from raygap import checkpoint, config, train
from raygap.errors import UserError

from helpers import CIFAR_SAMPLE, cifar_tree, tiny_imagenet_tree

pytestmark = pytest.mark.slow  # runs the papers' protocols end to end

ROOT = Path(__file__).resolve().parent.parent


def test_the_cpu_cifar10_search_config_trains_on_real_cifar_images(tmp_path):
    tree = cifar_tree(tmp_path)
    cfg = config.load([f"storage={tmp_path / 'results'}", f"data.root={tree}", "pretrain.epochs=1", "train.epochs=1",
                       "data.train_n=100", "eval.val_n=20"], "afd_cifar10_cpu")
    assert (cfg.model.name, cfg.method.name, cfg.data.eps, cfg.eval.eps) == ("smallcnn", "afd", 8 / 255, 8 / 255)
    result = train.run(cfg)
    assert [row["epoch"] for row in result["history"]] == [1]
    assert result["metrics"]["robust_acc"] <= result["metrics"]["clean_acc"]


def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_a_search_spaces_settings_serve_single_runs_of_other_methods(tmp_path):
    overrides = ["method=vaft", f"data.root={cifar_tree(tmp_path)}"]
    with pytest.raises(UserError, match="tune.space.method.disentangler_size names a key that does not exist"):
        config.load(overrides, "afd_cifar10_cpu")  # as a search, vAFT has no disentangler to search
    cfg = config.load(overrides, "afd_cifar10_cpu", search=False)
    assert (cfg.method.name, cfg.data.train_n, cfg.attack.steps, dict(cfg.tune.space)) == ("vaft", 5000, 5, {})


def test_the_methods_benchmark_compares_methods_over_seeds_on_real_cifar_images(tmp_path):
    rows = benchmark("methods").main([
        "--space", "afd_cifar10_cpu", "--variants", "vaft", "afd", "--seeds", "0", "1", "--lrs", "0.01", "--n", "8",
        "--storage", str(tmp_path / "results"), f"data.root={cifar_tree(tmp_path)}", "data.train_n=60",
        "pretrain.epochs=1", "train.epochs=1", "eval.val_n=20"])
    assert list(rows) == ["natural", "vaft", "afd"]
    for key in ("vaft", "afd"):
        _, lr, results, costs = rows[key]
        assert lr == "0.01" and len(results) == len(costs) == 2
        assert [r["method"] for r in results] == [key, key] and results[0]["checkpoint"] != results[1]["checkpoint"]
        for r in results:
            assert r["n_examples"] == 8 and r["robust_acc"] <= r["autoattack_acc"] <= r["clean_acc"]


def cifar100_batches(root):
    """CIFAR-100's official pickle files, holding real photographs (the shipped CIFAR-10 JPEGs)."""
    import pickle

    import numpy as np
    from PIL import Image

    photos = sorted(CIFAR_SAMPLE.glob("train/*/*.jpg"))[::10]
    x = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in photos])
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, part in (("train", slice(0, 24)), ("test", slice(24, 30))):
        n = len(x[part])
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": x[part].reshape(n, -1), "fine_labels": [i * 7 % 100 for i in range(n)]}, fh)
    return root


@pytest.mark.parametrize("layout", ["cifar10_folder", "cifar100", "tiny_imagenet"])
def test_the_paper_protocol_runs_end_to_end_on_each_of_its_data_sets(tmp_path, layout):
    root = {"cifar10_folder": lambda: cifar_tree(tmp_path), "cifar100": lambda: cifar100_batches(tmp_path / "data"),
            "tiny_imagenet": lambda: tiny_imagenet_tree(tmp_path)}[layout]()
    argv = ["--smoke", "--storage", str(tmp_path / "results"), f"data={layout}", f"data.root={root}"]
    argv += ["--parallel", "3"] if layout == "cifar100" else []  # the GPU's way: three processes at once
    results = tmp_path / "results"
    if layout == "cifar10_folder":  # in parts, as short GPU leases run it: each part only does its own work
        assert benchmark("table1").main(argv + ["--stop-after", "natural"]) is None
        assert [p.parent.parent.name for p in results.glob("*/*/model.pt")] == ["pretrained"]
        assert benchmark("table1").main(argv + ["--stop-after", "train"]) is None
        assert len(list(results.glob("table1-*/model.pt"))) == 3 and not list(results.glob("*/eval-*.json"))
        assert [row[0] for row in benchmark("table1").main(argv + ["--methods", "vaft"])] == ["vaft"]
        assert [p.parent.name for p in results.glob("*/eval-*.json")] == [f"table1-{layout}-vaft"]
        with pytest.raises(SystemExit) as refused:
            benchmark("table1").main(argv + ["--methods", "vaft,pgd"])
        assert refused.value.code == 2
    rows = benchmark("table1").main(argv)
    assert [method for method, _, _ in rows] == ["afd", "vaft", "trades"]
    for method, result, seconds in rows:
        assert result["architecture"] == "resnet18" and result["method"] == method and result["n_examples"] == 4
        assert result["precision"] == "fp32" and result["fgsm_acc"] <= result["clean_acc"] and seconds > 0
    text = (tmp_path / "results" / f"table1-{layout}.md").read_text()
    assert text.count("/ 84.88") == (layout == "cifar10_folder")  # the paper's AFD clean accuracy, CIFAR-10 only
    assert ("not given" in text) == (layout != "cifar10_folder")
    assert ("carved from the training images" in text) == (layout == "cifar10_folder")
    assert "PGD-20 takes steps of 2.5 eps / 20" in text  # a departure that stays is printed under the table
    (natural,) = (tmp_path / "results" / "pretrained").glob("*/model.pt")  # one natural start, shared
    side, classes = {"cifar10_folder": (32, 10), "cifar100": (32, 99), "tiny_imagenet": (64, 3)}[layout]
    with torch.no_grad():
        assert checkpoint.load(str(natural))[0].eval()(torch.zeros(2, 3, side, side)).shape == (2, classes)
    if layout == "cifar10_folder":  # re-running reads the finished runs and evaluations back
        again = benchmark("table1").main(argv)
        assert [r["robust_acc"] for _, r, _ in again] == [r["robust_acc"] for _, r, _ in rows]


def test_the_decay_benchmark_trains_both_rules_and_pairs_them_on_the_same_test_images(tmp_path):
    argv = [f"storage={tmp_path / 'results'}", f"data.root={cifar_tree(tmp_path)}", "seeds=[0]", "pretrain.epochs=1",
            "train.epochs=1", "data.train_n=16", "attack.steps=1", "eval.val_n=8", "eval.val_attack=fgsm",
            "final_eval.n=8", "final_eval.attacks=[clean,fgsm]"]
    out = benchmark("decay").main(argv)
    arms = out["arms"]
    assert list(arms.arm) == ["afd, decay 3x (official)", "afd, decay 2x (official_torch2)"]
    assert (arms.examples == 8).all() and (arms.test_fgsm_acc <= arms.test_clean_acc).all()
    updates = [checkpoint.load(str(next((tmp_path / "results" / "afd-decay" / name).glob("runs/untuned/model.pt"))))
               [1]["config"]["method"]["update"] for name in arms.experiment]
    assert updates == ["official", "official_torch2"]  # each run trained under its own rule
    (difference,) = out["differences"][out["differences"].measure == "robust"].itertuples()
    assert difference.low <= difference.difference <= difference.high and difference.examples == 8
    again = benchmark("decay").main(argv)  # re-running reads both runs and their evaluations back
    assert list(again["arms"].test_robust_acc) == list(arms.test_robust_acc)


def test_the_pbt_benchmark_runs_both_searches_at_the_same_compute_on_the_same_test_images(tmp_path):
    argv = [f"storage={tmp_path / 'results'}", f"data.root={cifar_tree(tmp_path)}", "seeds=[0]", "tune.num_samples=4",
            "pretrain.epochs=1", "train.epochs=2", "data.train_n=16", "attack.steps=1", "eval.val_n=8",
            "eval.val_attack=fgsm", "final_eval.n=8", "final_eval.attacks=[clean,fgsm]"]
    out = benchmark("pbt").main(argv)
    arms, folder = out["arms"], tmp_path / "results" / "afd-pbt"
    assert list(arms.arm) == ["afd, PBT schedule", "afd, best fixed schedule"]
    assert list(arms.trials) == [4, 4] and list(arms.epochs) == [8, 8]  # the same compute: none stopped early
    assert (arms.examples == 8).all() and (arms.test_fgsm_acc <= arms.test_clean_acc).all()
    # the fixed side is an Optuna search; PBT runs without a searcher
    assert (folder / "afd-fixed-seed0" / "optuna.journal").exists()
    assert not (folder / "afd-pbt-seed0" / "optuna.journal").exists()
