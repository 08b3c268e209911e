"""What the tests share that is not a fixture (those are in conftest.py): the shipped data, ports, and
the commands run as a user runs them."""

import contextlib
import importlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from raygap import config

CIFAR_SAMPLE = Path(__file__).parent / "data" / "cifar10_jpeg_sample"  # 300 real CIFAR-10 JPEGs, train/<class>/


def load(*overrides, storage):
    """The config a command would run with `overrides`, storing under `storage`."""
    return config.load([f"storage={storage}", *overrides])


def cifar_tree(tmp_path):
    """A copy of the shipped CIFAR-10 sample, so that its cache is written under tmp_path (not a cache
    that a run on the sample itself left there)."""
    tree = tmp_path / "cifar"
    shutil.copytree(CIFAR_SAMPLE, tree, ignore=shutil.ignore_patterns(".raygap_cache"))
    return tree


def tiny_imagenet_tree(tmp_path, classes: int = 3, train_per_class: int = 6, val_per_class: int = 2):
    """The official Tiny-ImageNet layout (wnids.txt, train/<wnid>/images/, val/images/ labelled by
    val/val_annotations.txt) made of real photographs: the shipped CIFAR-10 JPEGs resized to 64x64."""
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    sources = sorted(d for d in CIFAR_SAMPLE.joinpath("train").iterdir() if d.is_dir())[:classes]
    wnids = [f"n{index:08d}" for index in range(classes)]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))  # not sorted, as the archive's
    annotations = []
    for wnid, source in zip(wnids, sources):
        images = sorted(source.iterdir())[:train_per_class + val_per_class]
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # the archive has one per class
        for i, path in enumerate(images):
            image = Image.open(path).convert("RGB").resize((64, 64))
            if i < train_per_class:
                image.save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
            else:
                name = f"val_{wnid}_{i}.JPEG"
                image.save(root / "val" / "images" / name)
                annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(annotations))
    return root


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on localhost that nothing listens on now. Every socket stays bound until all
    are picked: ports taken one at a time can repeat (CI once gave the head's agent and client server one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    return free_ports(1)[0]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, f"{what} exited with status {process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} did not listen on port {port}")


BUCKET_ROOT = "s3://runs/raygap"  # the bucket the `s3` fixture makes


def serve_s3(port: int, **env) -> subprocess.Popen:
    """moto's S3 server on localhost: a real S3 endpoint (conditional writes included, atomic as S3's: see
    moto_s3.py) for the tests."""
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("moto_s3.py")), "-H", "127.0.0.1",
                               "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, **env))
    wait_for_port(port, server, "moto's S3 server")
    return server


def run_main(module, *args):
    """`python -m raygap.<module> args` run by the command's own main() in this process: the same parsing,
    validation and error line, without the seconds a new interpreter spends importing torch and Ray (for
    input refused before anything runs; `run_cli` runs the real process). Returns a CompletedProcess."""
    main = importlib.import_module(f"raygap.{module}").main
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, sys.argv = sys.argv, [f"raygap.{module}", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as stop:
        code = stop.code
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def run_cli(module, *args, cwd=None, env=None):
    """Run `python -m raygap.<module> args` as a user would (`env`: variables to add); returns the CompletedProcess."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", f"raygap.{module}", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)


SMALL = ["train.epochs=2", "tune.max_concurrent=2", "tune.scheduler.grace_period=1", "final_eval.n=100",
         "final_eval.attacks=[clean,pgd20]", "eval.val_n=100"]


def tune_cli(tmp_path, path, *args, **popen):
    command = [sys.executable, "-m", "raygap.tune", f"storage={tmp_path}", f"pretrained={path}", *SMALL, *args]
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def start_search_until_a_trial_completes(tmp_path, path, args, experiment):
    """Start `raygap.tune` in its own process group and wait until one trial has completed and another
    runs (the moment to kill its driver); returns (the process, the trials table then)."""
    from raygap import results

    search = tune_cli(tmp_path, path, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        trials = results.read_table(experiment, "trials")
        if not trials.empty and (trials.status == "completed").sum() >= 1 and (trials.status == "running").any():
            return search, trials
        assert search.poll() is None, search.stdout.read()[-3000:]
        time.sleep(1)
    raise AssertionError("the search never got one trial completed")


# The default AFD search plus two learning rates: 1e4 diverges (a failed trial, with its reason).
LR_SPACE = """
defaults: [afd, _self_]
tune:
  space:
    train.lr: {type: choice, values: [0.01, 10000.0]}
"""


def imagenet_tree(tmp_path, classes: int = 3, train_per_class: int = 10, val_per_class: int = 3):
    """The ILSVRC-2012 layout (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) made of real photographs of mixed
    sizes: the shipped CIFAR-10 JPEGs resized to sides between 36 and 80 pixels, some not square."""
    from PIL import Image

    root = tmp_path / "imagenet"
    sources = sorted(d for d in CIFAR_SAMPLE.joinpath("train").iterdir() if d.is_dir())[:classes]
    for number, source in enumerate(sources):
        wnid = f"n{number:08d}"
        for i, path in enumerate(sorted(source.iterdir())[:train_per_class + val_per_class]):
            part = "train" if i < train_per_class else "val"
            (root / part / wnid).mkdir(parents=True, exist_ok=True)
            size = (36 + (7 * i + 5 * number) % 45, 36 + (11 * i + 3 * number) % 45)
            Image.open(path).convert("RGB").resize(size).save(root / part / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root
