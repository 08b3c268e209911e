"""Object storage for real: an S3 server on localhost (moto's server mode), a search written to, paused
in (the server stopped until raygap says it waits), killed in, resumed from and reported out of `s3://`,
its tables read back with pandas and DuckDB, the notebook run on it, and the one-line refusals of a
bucket that does not exist, refused credentials and an endpoint that does not answer."""

import os
import shutil
import signal
import subprocess
import sys
import threading

import duckdb
import nbformat
import optuna
import pandas as pd
import pyarrow.dataset as pads
import pytest
from nbclient import NotebookClient

from raygap import results, storage
from raygap.study import open_storage

from helpers import BUCKET_ROOT, free_port, run_cli, serve_s3, start_search_until_a_trial_completes, tune_cli
from test_analysis import NOTEBOOK

pytestmark = pytest.mark.slow  # searches in a local S3 server

def wait_out_an_outage_of_the_bucket(search, server):
    """Pause the S3 server (SIGSTOP) until the running search says it noticed, at most 4 min; the search's
    output so far. The pause outlasts a request's timeouts, so the next write of an epoch row fails and is
    retried; it ends once raygap says so (a fixed pause could fall between two writes on a slow machine)."""
    lines, noticed = [], threading.Event()

    def read_output():
        for line in search.stdout:
            lines.append(line)
            if "does not answer" in line:
                noticed.set()

    threading.Thread(target=read_output, daemon=True).start()
    os.kill(server.pid, signal.SIGSTOP)
    try:
        noticed.wait(timeout=240)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert noticed.is_set(), "".join(lines)[-3000:]
    return "".join(lines)


def test_a_search_in_a_bucket_waits_out_an_outage_is_killed_resumed_and_read_back(s3, tmp_path, natural_digits):
    _, path = natural_digits
    args = [f"storage={BUCKET_ROOT}", "name=bucket", "tune.num_samples=3", "tune.scheduler.name=fifo"]
    experiment = f"{BUCKET_ROOT}/bucket"
    first, _ = start_search_until_a_trial_completes(tmp_path, path, args, experiment)
    output = wait_out_an_outage_of_the_bucket(first, s3["server"])
    assert "retrying for up to 300 s" in output  # one line, the bound with it
    os.killpg(first.pid, signal.SIGKILL)  # then the driver dies (the rows below: nothing lost, nothing twice)
    first.wait()
    assert storage.exists(f"{experiment}/optuna.journal")  # copied to the bucket at the first trial's end
    shutil.rmtree(s3["XDG_CACHE_HOME"])  # the driver's disk is lost too, as with a job pod

    second = tune_cli(tmp_path, path, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout and second.stdout.strip().splitlines()[-1] == experiment
    assert not storage.exists(f"{experiment}/driver.lock")  # released at the end

    trials = pd.read_parquet(f"{experiment}/trials")  # pandas through pyarrow's S3 filesystem
    assert (trials.status == "completed").sum() == 3
    # a trial the killed driver started before Tune saved its state is recorded as lost
    assert all(trials[trials.status != "completed"].error.str.startswith("lost:"))
    epochs = pads.dataset(f"{experiment}/epochs", format="parquet")  # noqa: F841 (DuckDB's query names it)
    per_trial = duckdb.sql("SELECT trial_id, count(*) AS n FROM epochs GROUP BY trial_id").df()
    completed = per_trial[per_trial.trial_id.isin(trials.trial_id[trials.status == "completed"])]
    assert list(completed.n) == [2, 2, 2]
    rows = int(per_trial.n.sum())
    study = optuna.load_study(study_name="bucket", storage=open_storage("", experiment))  # fetched from the bucket
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 3

    report = run_cli("report", f"storage={BUCKET_ROOT}")  # no name: the newest experiment in the bucket
    assert report.returncode == 0, report.stderr[-3000:]
    assert report.stdout.strip().splitlines()[-1] == f"{experiment}/report/index.html"
    assert b"optuna-dashboard" in storage.read_bytes(f"{experiment}/report/index.html")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source += f"\nexperiment = {experiment!r}"  # as papermill sets it: after the defaults
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert f"{experiment}: {len(trials)} trials, {rows} epoch rows" in "".join(o.get("text", "") for o in outputs)


@pytest.mark.parametrize("case", ["no such bucket", "credentials refused", "endpoint down"])
def test_a_storage_that_cannot_be_written_is_refused_with_one_line_before_ray(s3, tmp_path, case):
    env = {}
    if case == "credentials refused":  # a second server that checks credentials and knows none
        port = free_port()
        server = serve_s3(port, INITIAL_NO_AUTH_ACTION_COUNT="0")
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    elif case == "endpoint down":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    root = "s3://nobucket/raygap" if case == "no such bucket" else BUCKET_ROOT
    try:
        command = [sys.executable, "-m", "raygap.tune", f"storage={root}", "name=refused"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, **env))
    finally:
        if case == "credentials refused":
            server.terminate()
    assert done.returncode == 2 and done.stdout == ""
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith(f"raygap: error: storage {root} cannot be written")
    assert "AWS_ENDPOINT_URL" in line and "storage=" in line
    assert not results.read_table(f"{BUCKET_ROOT}/refused", "trials").shape[0]  # nothing written
