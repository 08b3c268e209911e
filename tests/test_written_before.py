"""Experiments written by earlier code keep working: the same command finds the same experiment (its name's
digest), and new epochs join the parts written then as one table, whichever part pyarrow reads first. The
pinned names and the part file were made by commit c0ea61e, before the epoch row became a type and the
folder's layout a module. The pinned natural model is the one benchmarks/results/cifar10-store keeps, cached by
32b038b before data.stream and the other streaming keys existed."""

import shutil
from pathlib import Path

import pytest

from raygap import config, results, runner, tune
from raygap.schema import as_dict

OLD_PART = Path(__file__).parent / "data" / "epochs-part-c0ea61e.parquet"
KEPT_NATURAL = Path(__file__).parents[1] / "benchmarks" / "results" / "cifar10-store" / "pretrained" / "296a4c1d2f"

# (search, overrides) -> the experiment name c0ea61e gave it (storage and data.root fixed: both are digested)
NAMES = [
    ("afd", [], "afd-digits-smallcnn-55535903b8"),
    ("afd", ["data=mnist"], "afd-mnist-smallcnn-de2e8f0d50"),
    ("defences", ["data=fashion_mnist"], "defences-fashion_mnist-smallcnn-0ecd5ed490"),
    ("afd_cifar10", ["recipe=afd_paper"], "afd_cifar10-cifar10-resnet18-9cb8b98987"),
    ("baselines", [], "baselines-digits-smallcnn-1440c57fb5"),
    ("baselines", ["data=mnist", "method=trades"], "baselines-mnist-smallcnn-6ef1cc74a8"),
    ("baselines", ["data=fashion_mnist", "method=trades"], "baselines-fashion_mnist-smallcnn-5878ecfa94"),
]


@pytest.mark.parametrize("search,overrides,name", NAMES)
def test_the_same_command_names_the_same_experiment(search, overrides, name):
    cfg = config.load(["storage=/tmp/x", "data.root=/data", *overrides], search)
    assert tune.experiment_name(cfg, search) == name


@pytest.mark.parametrize("overrides", [[], ["data.decoders=4", "data.decode_cpus=1", "pretrain.workers=2"]])
def test_the_same_command_finds_the_natural_model_cached_before_later_keys(overrides):
    where = ["storage=/tmp/x", "data.root=/work/cifar10-jpeg"]  # the root is digested for a folder tree
    cfg = config.load([*where, *overrides], "defences_cifar10_cpu")
    assert runner.natural_key(cfg) == KEPT_NATURAL.name and (KEPT_NATURAL / "model.pt").is_file()
    streamed = config.load([*where, "data.stream=true"], "defences_cifar10_cpu")
    assert runner.natural_key(streamed) != KEPT_NATURAL.name  # a later key away from its default counts


def test_new_epochs_join_a_table_written_before_as_one_table(tmp_path):
    (tmp_path / "epochs").mkdir()
    shutil.copy(OLD_PART, tmp_path / "epochs" / "old.parquet")
    old = results.read_part(str(tmp_path / "epochs" / "old.parquet"))
    row = results.EpochRow(epoch=1, kept_epoch=1, lr=0.01, loss=1.0, clean_acc=0.7, robust_acc=0.3, clean_se=0.02,
                           robust_se=0.02, kept_clean_acc=0.7, kept_robust_acc=0.3, images_per_s=1.0, mfu=None,
                           train_seconds=1.0, wall_seconds=1.0, gpu_seconds=0.0, cpu_seconds=1.0, finished_at=2e9,
                           losses={"ce_adv": 0.9, "align": 0.1}, node=None)
    cfg = config.load(["storage=/tmp/x"], "afd")
    results.write_epochs(str(tmp_path), "new", as_dict(cfg), [row.as_row()])
    table = results.read_table(str(tmp_path), "epochs")
    new = results.read_part(str(tmp_path / "epochs" / "new.parquet"))
    assert set(old.columns) < set(new.columns)  # PBT's lineage columns came later
    assert sorted(table.trial_id) == ["new", "old"] and set(table.columns) == set(new.columns)
    by_trial = table.set_index("trial_id")
    assert by_trial.loc[["old", "new"], "loss_ce_adv"].tolist() == [1.2, 0.9]
    assert by_trial.parent_trial.isna().all()  # the old part reads the added column as null
