"""The cluster files: Ray's own validation of the launcher configs, the KubeRay manifests, the upload
filter, and a real local autoscaling cluster (Ray's fake_multinode provider) running a submitted search."""

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import ray
import yaml

from helpers import free_ports, imagenet_tree
from raygap import results

pytestmark = pytest.mark.slow  # starts Ray clusters and submits jobs to them

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
IMAGE = f"rayproject/ray:{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}-gpu"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cluster_launcher_configs_pass_rays_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / name).read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["docker"]["image"] == IMAGE  # pinned to the Ray and Python raygap is tested with
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    nodes = config["available_node_types"]
    head, worker = nodes[config["head_node_type"]], nodes["gpu_worker"]
    assert head["resources"]["GPU"] == 0 and head["resources"]["trial_driver"] > 0
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1 and worker["resources"]["GPU"] >= 1
    assert all(isinstance(v, int) for node in nodes.values() for v in node["resources"].values())
    assert config["idle_timeout_minutes"] > 0
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert any("raygap" in c and "pip install" in c for c in config["setup_commands"])
    if name == "aws.yaml":
        assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        rules = config["provider"]["security_group"]["IpPermissions"]
        assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]  # only SSH from outside
    else:
        assert {"preemptible": True} in worker["node_config"]["scheduling"]
        assert "firewall" not in json.dumps(config).lower()


def test_kuberay_manifests_carry_what_kuberay_requires():
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__ and spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert "trial_driver" in spec["headGroupSpec"]["rayStartParams"]["resources"]
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1 and gpu["replicas"] == 0
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for group in [spec["headGroupSpec"], gpu]:
        assert all(p.get("name") != "dashboard" or "hostPort" not in p
                   for c in group["template"]["spec"]["containers"] for p in c.get("ports", []))
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("python -m raygap.tune")
    assert isinstance(yaml.safe_load(job["spec"]["runtimeEnvYAML"]), dict)
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["rayClusterSpec"] == spec  # the job's cluster is raycluster.yaml's


def test_rayignore_keeps_results_data_checkpoints_and_git_out_of_the_upload(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    copy_ = tmp_path / "repo"
    top_level_junk = {".ci-venv", ".venv", "raygap_results", "data", ".git"}
    shutil.copytree(ROOT, copy_,
                    ignore=lambda folder, names: top_level_junk & set(names) if Path(folder) == ROOT else [])
    for junk in ["raygap_results/x/trials/a.parquet", "data/cifar-10-batches-py/data_batch_1", "model.pt",
                 ".git/objects/pack/big", "raygap_results/x/optuna.db"]:
        (copy_ / junk).parent.mkdir(parents=True, exist_ok=True)
        (copy_ / junk).write_bytes(b"x")
    package = tmp_path / "upload.zip"
    create_package(str(copy_), package, include_gitignore=False)  # .rayignore alone
    names = zipfile.ZipFile(package).namelist()
    assert {"raygap/tune.py", "search_spaces/afd.yaml", "search_spaces/data/digits.yaml"} <= set(names)
    assert not [n for n in names if n.startswith(("raygap_results/", "data/", ".git/")) or n.endswith(".pt")]


def test_a_search_submitted_to_a_local_autoscaling_cluster_runs_on_added_gpu_nodes(tmp_path, natural_digits):
    _, path = natural_digits
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    options = ("dashboard-agent-listen-port", "ray-client-server-port", "runtime-env-agent-port", "metrics-export-port")
    gcs, dashboard, *others = free_ports(2 + len(options))
    address = f"http://127.0.0.1:{dashboard}"
    # local.yaml's fake nodes join the head at port 6379 unless told otherwise: tell them our free port
    autoscaling = yaml.safe_load((CLUSTER / "local.yaml").read_text())
    autoscaling["provider"]["gcs_address"] = f"127.0.0.1:{gcs}"
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(autoscaling))
    # Every port of the head its own: the defaults (the job agent's 52365, the client server's 10001) are
    # taken when another Ray cluster runs on this machine, and the job submission would find no agent.
    ports = [f"--{option}={port}" for option, port in zip(options, others)]
    started = subprocess.run([ray_cli, "start", "--head", f"--autoscaling-config={tmp_path / 'local.yaml'}",
                              "--num-cpus=1", '--resources={"trial_driver": 1000}', "--node-ip-address=127.0.0.1",
                              f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", *ports,
                              "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}"
        # No --working-dir here (raygap is installed): the fake nodes share one session folder, and a
        # fake node that goes away deletes the unpacked working dir, the job driver's cwd, under it.
        job = subprocess.run(
            [ray_cli, "job", "submit", "--address", address, "--",
             sys.executable, "-m", "raygap.tune", f"storage={tmp_path}", "name=cluster", f"pretrained={path}",
             "tune.num_samples=2", "train.epochs=2", "train.workers=1", "train.gpus_per_worker=1",
             "train.cpus_per_worker=1", "train.backend=gloo", "tune.trial_resources={CPU:0.1,trial_driver:1}",
             "final_eval.n=100", "final_eval.attacks=[clean,pgd20]"],
            env=env, capture_output=True, text=True, timeout=900)
        assert job.returncode == 0 and "Job 'raysubmit_" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout

        head, added = _nodes(ray_cli, address, env)
        assert added  # the autoscaler launched at least one GPU worker node

        trials = results.read_table(tmp_path / "cluster", "trials")
        epochs = results.read_table(tmp_path / "cluster", "epochs")
        assert len(trials) == 2 and set(trials.status) <= {"completed", "stopped_early"}
        assert sorted(epochs.groupby("trial_id").epoch.max()) == sorted(trials.epochs)
        assert set(epochs.node) <= added and not set(epochs.node) & head  # trials trained on worker nodes
        assert trials.finalist.fillna(False).sum() == 1

        # the comparison is submitted the same way: one search per method, its finalists on the same test images
        compare = subprocess.run(
            [ray_cli, "job", "submit", "--address", address, "--",
             sys.executable, "-m", "raygap.compare", f"storage={tmp_path}", "name=compared", f"pretrained={path}",
             "methods=[vaft,afd]", "untuned=[]", "tune.num_samples=1", "train.epochs=1", "train.workers=1",
             "train.gpus_per_worker=1", "train.cpus_per_worker=1", "train.backend=gloo",
             "tune.trial_resources={CPU:0.1,trial_driver:1}", "final_eval.n=50", "final_eval.attacks=[clean,pgd20]"],
            env=env, capture_output=True, text=True, timeout=900)
        assert compare.returncode == 0 and "succeeded" in compare.stdout, \
            compare.stdout[-3000:] + compare.stderr[-3000:]
        arms = results.read_table(tmp_path / "compared", "arms")
        assert list(arms.arm) == ["vaft (tuned)", "afd (tuned)"] and (arms.examples == 50).all()
        assert not results.read_table(tmp_path / "compared", "differences").empty

        # an image tree streamed to two Ray Train workers on two nodes, decoded on whichever CPUs are free
        tree = imagenet_tree(tmp_path, train_per_class=8)
        streamed = subprocess.run(
            [ray_cli, "job", "submit", "--address", address, "--",
             sys.executable, "-m", "raygap.train", f"storage={tmp_path}", "name=streamed", "data=imagenet",
             f"data.root={tree}", "data.image_size=32", "data.decode_cpus=0.25", "model=smallcnn", "init=scratch",
             "method=natural", "train.epochs=1", "train.batch_size=8", "train.workers=2", "train.gpus_per_worker=1",
             "train.cpus_per_worker=0.5", "train.backend=gloo", "eval.val_n=10"],
            env=env, capture_output=True, text=True, timeout=900)
        assert streamed.returncode == 0 and "succeeded" in streamed.stdout, \
            streamed.stdout[-3000:] + streamed.stderr[-3000:]
        epochs = results.read_table(tmp_path / "streamed", "epochs")
        # a GPU each, on nodes of one GPU: the two workers ran on two nodes (rank 0's is the table's)
        assert list(epochs.epoch) == [1] and set(epochs.node) <= _nodes(ray_cli, address, env)[1]
    finally:
        _stop_cluster(gcs)


def _nodes(ray_cli: str, address: str, env: dict) -> tuple[set, set]:
    """(the head node, the GPU worker nodes) the cluster has had, by id."""
    nodes = json.loads(subprocess.run([ray_cli, "list", "nodes", "--address", address, "--format", "json",
                                       "--limit", "100"], env=env, capture_output=True, text=True, check=True).stdout)
    return ({n["node_id"] for n in nodes if n["is_head_node"]},
            {n["node_id"] for n in nodes if not n["is_head_node"] and n["resources_total"].get("GPU", 0) >= 1})


def _stop_cluster(gcs_port: int) -> None:
    """Stop this test's Ray processes: those naming its GCS port on their command lines, and their children
    (Ray's agents rename themselves, ray::DashboardAgent, and name nothing). `ray stop` would stop every
    Ray cluster of the user on this machine, a search running beside the tests included."""
    import psutil

    ours = re.compile(rf"(--gcs-address=\S+:|--address=\S+:|--gcs_server_port=){gcs_port}(?!\d)")
    processes = set()
    for process in psutil.process_iter(["cmdline"]):
        if ours.search(" ".join(process.info["cmdline"] or [])):
            with contextlib.suppress(psutil.NoSuchProcess):
                processes |= {process, *process.children(recursive=True)}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # it ended on its own meanwhile
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=30)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
