"""Bad input to the commands: one clear line on stderr, exit status 2, nothing written. The table of bad
overrides runs each command's main() in this process (a new interpreter per row took two minutes); one row
and the refusals after it run the real command line."""

import re

import pytest

from helpers import run_cli, run_main

BAD = [
    (["foo=1"], "unknown config key 'foo'"),
    (["attack.eps=-0.1"], "attack.eps must be >= 0"),
    (["attack.eps=3"], "covers the whole [0, 1] pixel range"),
    (["attack.eps=abc"], "could not be converted to Float"),
    (["attack.steps=0"], "attack.steps must be >= 1"),
    (["data=imagenet21k"], "unknown data 'imagenet21k'"),
    (["model=vit"], "unknown model 'vit'"),
    (["attack.name=deepfool"], "attack.name 'deepfool' is unknown"),
    (["eval.attacks=[clean,pgdx]"], "unknown attack 'pgdx'"),
    (["data=cifar10", "data.root=/nonexistent"], "data.download=true"),
    (["name=../escape"], "stays inside storage"),
    (["method=afd", "method.disentangler_size=0"], "method.disentangler_size must be >= 1"),
    (["train.compile=maybe"], "pretrain.compile must be auto, true or false"),  # the command trains pretrain.*
    (["train.precision=fp16"], "pretrain.precision 'fp16' is unknown; choose one of: auto, bf16, fp32"),
    (["data.resident=disk"], "data.resident 'disk' is unknown; choose one of: auto, device, host"),
    (["eval.attacks=[clean,deepfool]"], "unknown attack 'deepfool'"),
    (["eval.val_attack=apgd"], "unknown attack 'apgd'"),
    (["eval.eps=-0.01"], "eval.eps must be >= 0"),
    (["eval.eps=2"], "covers the whole [0, 1] pixel range"),
    (["eval.format=csv"], "eval.format 'csv' is unknown; choose one of: raygap, robustbench"),
    (["eval.format=robustbench", "eval.attacks=[clean,pgd20]"], "add autoattack to eval.attacks"),
    (["eval.format=robustbench", "eval.n=500"],
     "eval.format=robustbench reports the whole test split, and eval.n=500 evaluates part of it: set eval.n=0"),
    (["recipe=trades_paper", "model=resnet18"],
     "model=resnet18 departs from recipe=trades_paper, which trains the paper's model=wrn34_10"),
    (["data.val_fraction=0"], "train.keep=best chooses the epoch on validation, and data.val_fraction=0 leaves none"),
    (["data.val_fraction=1"], "data.val_fraction must lie in [0, 1) (0: no validation split), got 1.0"),
    (["eval.info.reported=high"], "eval.info.reported must be a percentage such as 47.40"),
    (["method=afd", "method.update=triple"],
     "method.update 'triple' is unknown; choose one of: official, official_torch2, split"),
    (["train.schedule=onecycle"],
     "pretrain.schedule 'onecycle' is unknown; choose one of: step, afd, cosine, constant"),
    (["recipe=madry"], "unknown recipe 'madry'; choose one of: afd_imagenet, afd_paper, mart_paper, trades_paper"),
    (["init=imagenet"], "init 'imagenet' is unknown; choose one of: auto, pretrained, scratch"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    storage = tmp_path / "results"
    proc = run_main("pretrain", f"storage={storage}", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raygap: error:"), proc.stderr
    assert re.search(r"(^|\s)" + re.escape(message), lines[0]), lines[0]  # whole: not inside a longer key
    assert "Traceback" not in proc.stderr
    assert not storage.exists()


@pytest.mark.parametrize("args,message", [
    (["method.sigma=-1"], "method.sigma must be >= 0, got -1.0"),
    (["method.alpha=high"], "method.alpha: Value 'high' of type 'str' could not be converted to Float"),
    (["method.align_weight=-50"], "method.align_weight must be >= 0, got -50.0"),
    (["data.val_fraction=0"], "data.val_fraction=0 leaves no validation split, and a search ranks its trials on one"),
])
def test_bad_input_to_the_cifar100_search_is_refused(tmp_path, args, message):
    storage = tmp_path / "results"
    proc = run_main("tune", "search=afd_cifar100", f"storage={storage}", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not storage.exists()


def test_the_real_command_line_refuses_as_the_command_does_in_process(tmp_path):
    args = ("pretrain", f"storage={tmp_path / 'results'}", "attack.eps=-0.1")
    real, in_process = run_cli(*args), run_main(*args)
    assert (real.returncode, real.stderr) == (in_process.returncode, in_process.stderr) == (2, in_process.stderr)
    assert in_process.stderr.startswith("raygap: error: bad config: attack.eps must be >= 0")


def test_unreadable_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_text("garbage")
    proc = run_cli("evaluate", f"checkpoint={bad}", f"eval.out={tmp_path / 'out.json'}")
    assert proc.returncode == 2 and "cannot read checkpoint" in proc.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_checkpoint_on_images_of_the_wrong_shape_is_refused(tmp_path, natural_digits):
    proc = run_cli("evaluate", f"checkpoint={natural_digits[1]}", "data=cifar10", f"data.root={tmp_path}")
    # the data is missing, too; the shape is checked once the data loads, so write the data first
    assert proc.returncode == 2
    from test_data import write_cifar10

    write_cifar10(tmp_path)
    proc = run_cli("evaluate", f"checkpoint={natural_digits[1]}", "data=cifar10", f"data.root={tmp_path}")
    assert proc.returncode == 2 and "takes (1, 8, 8) images" in proc.stderr


@pytest.mark.slow
def test_a_diverging_run_is_one_line_and_its_rerun_ends_at_once_with_the_same_reason(tmp_path, natural_digits):
    args = ["train", f"storage={tmp_path}", "name=nan", "method=vaft", "train.lr=10000", "train.epochs=3",
            f"pretrained={natural_digits[1]}"]
    first = run_cli(*args)
    assert first.returncode == 2 and first.stderr.startswith("raygap: error: training diverged"), first.stderr
    assert "lower train.lr (now 10000.0)" in first.stderr and "] epoch " not in first.stdout
    again = run_cli(*args)
    assert again.returncode == 2 and again.stderr == first.stderr
    assert "training vaft" in again.stdout and "] epoch " not in again.stdout  # it started and did not train
    assert not (tmp_path / "nan" / "model.pt").exists()


def test_a_search_space_file_named_like_the_one_it_builds_on_is_one_line(tmp_path):
    space = tmp_path / "afd.yaml"  # hides the shipped afd.yaml that its defaults name
    space.write_text("defaults: [afd, _self_]\ntune:\n  num_samples: 2\n")
    proc = run_cli("tune", f"search={space}", f"storage={tmp_path / 'results'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "raygap: error: search space 'afd' includes itself through its defaults: a file named like the search "
        "space it builds on hides it; rename the file"]
    assert not (tmp_path / "results").exists()


@pytest.mark.slow  # builds and installs a wheel
def test_a_built_wheel_runs_a_command_from_another_directory(tmp_path):
    """`pip install .` (not editable) must carry search_spaces/: the wheel is built, installed without
    the checkout on the path, and a command run from an unrelated folder composes every shipped config."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", str(checkout), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("raygap-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(target), RAY_AUTH_MODE="disabled")  # ahead of the editable checkout
    code = ("import raygap, raygap.config as c; print(raygap.__file__); print(c.config_dir()); "
            "[c.load(['storage=/tmp/unused', 'data.root=/tmp/unused'], p.stem) "
            "for p in sorted(c.config_dir().glob('*.yaml')) if p.stem != 'raygap']")
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    package, configs = proc.stdout.split()[:2]
    assert package.startswith(str(target)) and configs == str(target / "raygap" / "search_spaces")
    trained = subprocess.run([sys.executable, "-m", "raygap.train", "--cfg", "recipe=afd_paper", "data=tiny_imagenet"],
                             cwd=elsewhere, env=env, capture_output=True, text=True)
    assert trained.returncode == 0 and "recipe: afd_paper" in trained.stdout, trained.stderr
