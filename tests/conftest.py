import os
import subprocess
import sys

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"

from raygap import config, pretrain  # noqa: E402


def load(*overrides, storage):
    return config.load([f"storage={storage}", *overrides])


@pytest.fixture(scope="session")
def natural_digits(tmp_path_factory):
    """A naturally trained digits model (the package default settings), shared by the whole session."""
    storage = tmp_path_factory.mktemp("storage")
    cfg = load(storage=storage)
    result = pretrain.run(cfg)
    return cfg, result["checkpoint"]


def run_cli(module, *args, cwd=None):
    """Run `python -m raygap.<module> args` as a user would; returns the CompletedProcess."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", f"raygap.{module}", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)
