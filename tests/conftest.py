"""Fixtures shared by the test modules (helpers that are not fixtures are in helpers.py), and the rule
that keeps the fast tier fast: a test that trains with the shared natural model is marked slow where it
is written, or the collection stops."""

import os

import pytest
from filelock import FileLock

os.environ["RAY_AUTH_MODE"] = "disabled"

from helpers import LR_SPACE, free_port, load, serve_s3, tune_cli  # noqa: E402
from raygap import runner  # noqa: E402


def pytest_collection_modifyitems(items):
    """`pytest -m "not slow"` is the fast tier; the whole suite is what CI runs. The natural model takes
    half a minute to train, so a test that asks for it and is not marked slow is a mistake in the tests."""
    unmarked = [item.nodeid for item in items
                if "natural_digits" in item.fixturenames and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("mark these tests @pytest.mark.slow (they train the natural model): "
                                + ", ".join(unmarked))


@pytest.fixture(scope="session")
def natural_digits(tmp_path_factory):
    """A naturally trained digits model (the package default settings), shared by the whole session: by
    every pytest-xdist worker too, which find it in the cache of a storage they share (the first trains it,
    under a lock). Tests only read that storage."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # each worker's base folder lies in the run's
    with FileLock(shared / "natural_digits.lock"):
        cfg = load(storage=shared / "natural_digits")
        result = runner.natural_model(cfg)
    return cfg, result["checkpoint"]


@pytest.fixture(scope="session")
def small_search(tmp_path_factory, natural_digits):
    """A real small search, shared: AFD on digits, 4 random trials of 2 epochs, one of them diverging,
    each trial an MLflow run too (in `<tmp>/mlflow.db`).

    Its storage is `<tmp>/raygap_results`, so tools that default to the newest experiment there find it.
    Returns (experiment folder, the finished process, the arguments that re-run it).
    """
    storage = tmp_path_factory.mktemp("search") / "raygap_results"
    space = storage.parent / "with_lr.yaml"
    space.write_text(LR_SPACE)
    # seed 3 draws one diverging and three training learning rates
    args = [f"search={space}", "name=small", "tune.num_samples=4", "tune.algorithm=random", "tune.seed=3",
            "tune.trackers=[mlflow]", f"tune.mlflow_uri=sqlite:///{storage.parent}/mlflow.db"]
    proc = tune_cli(storage, natural_digits[1], *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return storage / "small", proc, args


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on localhost with the bucket `runs`, set for this process and every command it starts
    through the usual AWS settings (its server process under "server"); the Optuna journal's local copies
    go to a fresh cache folder."""
    import boto3

    port = free_port()
    server = serve_s3(port)
    settings = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in settings.items():
            patch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="runs")
        yield {**settings, "server": server}
    server.terminate()
    server.wait()
