"""The real-data CIFAR-10 protocols, run tiny on the CPU on the shipped sample of real CIFAR-10 images."""

import importlib.util
from pathlib import Path

from raygap import config, train

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


def test_the_table1_protocol_runs_end_to_end_on_real_cifar_images(tmp_path):
    spec = importlib.util.spec_from_file_location("table1", ROOT / "benchmarks" / "table1.py")
    table1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table1)
    rows = table1.main(["--smoke", "--storage", str(tmp_path / "results"), f"data.root={cifar_tree(tmp_path)}"])
    assert [method for method, _, _ in rows] == ["afd", "vaft", "trades"]
    for method, result, _ in rows:
        assert result["architecture"] == "resnet18" and result["method"] == method and result["n_examples"] == 8
        assert result["pgd20_acc"] <= result["clean_acc"]
    assert (tmp_path / "results" / "table1.md").read_text().count("/ 84.88") == 1
