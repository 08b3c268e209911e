"""The real-data CIFAR-10 protocols, run tiny on the CPU on the shipped sample of real CIFAR-10 images."""

import importlib.util
import sys
from pathlib import Path

import pytest

from raygap import config, train
from raygap.errors import UserError

from conftest import cifar_tree

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


def test_the_table1_protocol_runs_end_to_end_on_real_cifar_images(tmp_path):
    rows = benchmark("table1").main(["--smoke", "--storage", str(tmp_path / "results"), f"data.root={cifar_tree(tmp_path)}"])
    assert [method for method, _, _ in rows] == ["afd", "vaft", "trades"]
    for method, result, _ in rows:
        assert result["architecture"] == "resnet18" and result["method"] == method and result["n_examples"] == 8
        assert result["pgd20_acc"] <= result["clean_acc"]
    assert (tmp_path / "results" / "table1.md").read_text().count("/ 84.88") == 1
