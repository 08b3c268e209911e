"""The method contract: a defence is one class in one file, owning every module it uses."""

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch

import raygap.methods
from raygap.methods import METHODS
from raygap.methods.afd import AFD
from raygap.models import build_model

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_defence() -> str:
    """The example defence of the README's "Methods" section, as a user would copy it."""
    text = README.read_text()
    return text.split("Adding a defence", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def train_with_readme_defence(tmp_path, *overrides):
    script = readme_defence() + "\nimport sys\nfrom raygap.train import main\nsys.argv[0] = 'raygap.train'\nmain()\n"
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    return subprocess.run([sys.executable, "-c", script, f"storage={tmp_path}", "name=alp", "method=alp",
                           "init=scratch", "train.epochs=1", "data.train_n=300", "eval.val_n=60", *overrides],
                          capture_output=True, text=True, env=env, timeout=600)


def test_the_readme_defence_trains_with_no_edit_elsewhere(tmp_path):
    proc = train_with_readme_defence(tmp_path, "method.weight=0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "alp" / "model.pt")
    (part,) = (tmp_path / "alp" / "epochs").glob("*.parquet")
    row = pq.read_table(part).to_pylist()[0]
    assert row["method.name"] == "alp" and row["method.weight"] == 0.5
    assert row["loss_pairing"] > 0 and row["loss_ce_adv"] > 0  # its own loss parts became columns


def test_the_readme_defence_checks_its_params_before_anything_runs(tmp_path):
    proc = train_with_readme_defence(tmp_path / "results", "method.weight=-1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "raygap: error: bad config: method.weight must be >= 0, got -1.0"
    assert not (tmp_path / "results").exists()


def test_every_file_of_the_package_registers_its_method():
    files = {f"raygap.methods.{m.name}" for m in pkgutil.iter_modules(raygap.methods.__path__)}
    files -= {"raygap.methods.base"}
    assert {cls.__module__ for cls in METHODS.values()} == files
    assert all(METHODS[name].Params().name == name for name in METHODS)


def test_the_objective_moves_and_freezes_its_teacher_with_it():
    model = build_model("smallcnn", (1, 8, 8), 10, [0.5], [0.25])
    objective = AFD(model, AFD.Params(), attack=None).to(torch.float64)  # a dtype stands in for a device here
    assert {p.dtype for p in objective.teacher.parameters()} == {torch.float64}
    assert {p.dtype for p in objective.module.parameters()} == {torch.float64}
    objective.train()
    assert objective.module.training and not objective.teacher.training
    assert not any(p.requires_grad for p in objective.teacher.parameters())
    trained = {id(p) for group in objective.param_groups(5e-4) for p in group["params"]}
    assert trained.isdisjoint(id(p) for p in objective.teacher.parameters())
