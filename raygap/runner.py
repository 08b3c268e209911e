"""Where a run runs, and where its checkpoints go.

Which process trains (`execute`):
- `train.workers=0`: the calling process, through the same `loop.train_loop`. Outside Ray that is the
  command's own process (`LocalContext`); in a search, the Tune trial's process (`TuneTrialContext`,
  which also reports each epoch to Tune).
- `train.workers=N>=1`: N Ray Train workers (`RayContext`, DDP: gloo on CPU, nccl on GPU), started by a
  TorchTrainer from this process or from the trial's.

Where its checkpoints go: the whole training state after every epoch to `<run_dir>/state.pt` in this
process or a trial's, to Ray Train's checkpoint folder under `<run_dir>` for Ray Train workers; the
exported classifier to `<run_dir>/model.pt` (rank 0, last epoch). The natural model is cached under
`<storage>/pretrained/<key>/` (`natural_model`). Running the same run again resumes from its state.

Ray: `connect` joins RAY_ADDRESS (as under `ray job submit`) or starts a local cluster on 127.0.0.1,
which runs without token authentication (RAY_AUTH_MODE defaults to disabled for it) and whose dashboard
is not reachable from other machines. `prepare` refuses, before anything starts or waits, resources that
a run can never get: on this machine for a run in this process, on the cluster for Ray Train workers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import psutil
import torch
from omegaconf import OmegaConf

from raygap import checkpoint, layout, storage, stream
from raygap.errors import UserError
from raygap.loop import Job, train_loop
from raygap.ray_compat import max_cluster_resources
from raygap.schema import as_dict, digest, without_later_keys

# --- Ray ------------------------------------------------------------------------------------------


def joins_existing_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


@contextlib.contextmanager
def ctrl_c_stays_raygaps():
    """Around Ray Tune's or Ray Train's fit(): Ctrl-C stays a KeyboardInterrupt, which raygap's commands answer
    with how to resume. Both install their own SIGINT (and SIGUSR1) handler in the main thread and leave it
    there (ray#37737, closed unfixed), so the handlers found are put back: after a search, the next Ctrl-C of
    the process (a comparison's next arm, its evaluation) was only logged; after a Ray Train run, Ray Train's
    handler (data_parallel_trainer.py) would abort a controller long gone, which it answers with sys.exit(0).
    During a Ray Train run that handler aborts the run, then exits the driver (SystemExit(1) from the pending
    ray.get, or 0 from the handler): an interruption, not a failure (a traceback) or a finished run (exit 0)."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    except SystemExit:
        raise KeyboardInterrupt from None
    finally:
        if threading.current_thread() is threading.main_thread():  # the only thread they install them from
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def connect() -> None:
    """ray.init once: join RAY_ADDRESS when it is set, else start a local cluster on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    if joins_existing_cluster():
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING")
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray Train's controller polls its workers every 2 s by default: a worker that dies within that
    # window of a report loses the report's checkpoint, and every run waits on a few polls to start.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    for attempt in range(1, STARTS + 1):
        ours = {child.pid for child in psutil.Process().children()}
        try:
            ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1", logging_level="WARNING")
            return
        except Exception as err:
            # Ray 2.60 gives its raylet a fixed 30 s to register (ray/_private/node.py); on a loaded machine
            # (two test processes starting clusters on two cores, say) it can take longer, and the node it
            # started is left behind: stop that node's processes, then start again
            if "timed out during startup" not in str(err) or attempt == STARTS:
                raise
            for child in psutil.Process().children():
                if child.pid not in ours:
                    for process in [*child.children(recursive=True), child]:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            process.kill()
            ray.shutdown()
            print(f"[ray] the local Ray node did not start within Ray's 30 s (a busy machine): starting it again "
                  f"({attempt + 1} of {STARTS})", file=sys.stderr, flush=True)


STARTS = 3  # tries to start a local Ray node


def local_resources() -> dict:
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def _refuse(need: dict, have: dict, where: str):
    for key, amount in need.items():
        if amount > have.get(key, 0) + 1e-9:
            raise UserError(f"the run needs {amount:g} {key} but {where} has at most {have.get(key, 0):g}; "
                            f"lower train.workers, train.cpus_per_worker or train.gpus_per_worker (or "
                            f"tune.max_concurrent), or use a larger cluster")


def check_resources(need: dict, per_worker: dict) -> None:
    """Refuse, before anything waits on them, resources that the cluster can never provide.

    need: the total of one run at a time; per_worker: what one worker needs on a single node. On a local
    cluster the limits are this machine's; on an existing cluster, what its autoscaler may add (when it
    publishes its node types). A local cluster is checked before it starts.
    """
    if not joins_existing_cluster():
        have = local_resources()
        _refuse(need, have, "this machine")
        _refuse(per_worker, have, "this machine")
        return
    connect()

    maximum = max_cluster_resources()
    if maximum:
        _refuse(need, {k: float(v) for k, v in maximum.items()}, "the cluster, even fully scaled up,")
    # Without published node types the cluster may still grow, so nothing is refused: Ray waits.


def resources(t) -> tuple[dict, dict]:
    """(what one run of TrainConfig `t` needs in total, what one of its workers needs on one node)."""
    per_worker = {"CPU": t.cpus_per_worker, "GPU": t.gpus_per_worker}
    return {k: v * max(t.workers, 1) for k, v in per_worker.items()}, per_worker


def prepare(*trainings, streamed=None) -> None:
    """Check the resources of the given TrainConfigs, and connect to Ray if any of them uses Ray Train.
    A run in this process (workers=0) is checked against this machine: asked for a GPU it does not have,
    it is refused rather than trained on the CPU. `streamed`: the data config when the data is streamed,
    whose decoding tasks need CPUs beside the trainers, and Ray (Ray Data decodes, even in this process)."""
    for t in trainings:
        total, per_worker = resources(t)
        if streamed is not None:
            total["CPU"] += stream.decoding_cpus(streamed, t)
        if t.workers == 0:
            _refuse(total, local_resources(), "this machine (train.workers=0 trains in this process)")
        else:
            check_resources(total, per_worker)
    if streamed is not None or any(t.workers > 0 for t in trainings):
        connect()


# --- where the loop runs --------------------------------------------------------------------------


class LocalContext:
    """One process, checkpoints in `run_dir/state.pt` (latest only)."""

    rank, world, cpus, node = 0, 1, 1.0, None
    decode_group = None  # where a streamed run's decoding tasks go (stream.StreamedBatches): anywhere free

    def __init__(self, run_dir: str):
        self.path = layout.state(run_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.gpus = 1.0 if self.device.type == "cuda" else 0.0

    def restore(self):
        if not storage.exists(self.path):
            return None
        return torch.load(io.BytesIO(storage.read_bytes(self.path)), map_location=self.device, weights_only=True)

    def report(self, metrics: dict, state: dict):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        storage.write_bytes(self.path, buffer.getvalue())


class TuneTrialContext(LocalContext):
    """A Tune trial that trains in its own process (train.workers=0). Its checkpoint is `state.pt` in the
    run folder, as for a run in this process: unlike the checkpoint in Tune's last saved experiment
    state, it is always the newest, so a resumed search never trains a finished epoch again. Each
    epoch's metrics go to Tune."""

    def __init__(self, run_dir: str, cpus: float, gpus: float):
        import ray
        from ray.util import get_current_placement_group

        super().__init__(run_dir)
        if not gpus:
            self.device = torch.device("cpu")
        self.cpus, self.gpus = cpus, gpus
        self.node = ray.get_runtime_context().get_node_id()
        group = get_current_placement_group()
        if group is not None and group.bundle_count > 1:  # a streamed trial's reserved decoding CPUs (tune.py)
            self.decode_group = group

    def report(self, metrics: dict, state: dict):
        import ray.tune

        super().report(metrics, state)
        ray.tune.report(metrics)


class PopulationContext(TuneTrialContext):
    """A trial of a PBT search (tune.scheduler.name=pbt). Each epoch's state also goes to Tune as the trial's
    checkpoint, with the trial and epoch it is of: PBT hands the checkpoint of a better trial to one it
    replaces, whose restart then takes that state (weights, optimiser buffers, steps) under its own new
    config, keeps its own epochs up to the parent's, and names its parent in its next epoch's row. The state is
    written twice an epoch (state.pt, the newest, for a search resumed by running it again; Tune's copy
    for PBT), which a small model pays in milliseconds."""

    def __init__(self, run_dir: str, cpus: float, gpus: float, trial_id: str):
        super().__init__(run_dir, cpus, gpus)
        self.trial_id = trial_id

    def restore(self):
        import ray.tune

        own = super().restore()
        given = ray.tune.get_checkpoint()
        if given is None:
            return own
        with given.as_directory() as folder:
            source = json.loads(Path(folder, "source.json").read_text())
            if source["trial"] == self.trial_id:
                return own  # this trial's own (paused and resumed): state.pt is at least as new
            donor = torch.load(Path(folder, "state.pt"), map_location=self.device, weights_only=True)
        # This trial's epochs up to the donor's are its own record; what comes after trains from the donor's
        # state (epochs it had trained past the donor's are dropped: they are of a lineage that ends here).
        mine = own or {"history": [], "configs": []}
        kept = [i for i, row in enumerate(mine["history"]) if row["epoch"] <= source["epoch"]]
        return {**donor, "history": [mine["history"][i] for i in kept],
                "configs": [mine["configs"][i] for i in kept] if mine.get("configs") else None,
                "kept_weights": None, "parent": source}

    def report(self, metrics: dict, state: dict):
        import ray.tune

        LocalContext.report(self, metrics, state)  # state.pt; not TuneTrialContext's: one report, with the checkpoint
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, "state.pt"))
            Path(folder, "source.json").write_text(json.dumps({"trial": self.trial_id, "epoch": metrics["epoch"]}))
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))


class RayContext:
    """A worker of a Ray Train run: rank and device from Ray, checkpoints through `ray.train.report`."""

    decode_group = None

    def __init__(self, cpus: float, gpus: float):
        import ray
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            self.device = torch.device("cpu")  # a GPU that is only a resource (Ray's fake_multinode nodes)
        self.cpus, self.gpus = cpus, gpus
        self.node = ray.get_runtime_context().get_node_id()

    def restore(self):
        import ray.train

        saved = ray.train.get_checkpoint()
        if saved is None:
            return None
        with saved.as_directory() as folder:
            return torch.load(os.path.join(folder, "state.pt"), map_location=self.device, weights_only=True)

    def report(self, metrics: dict, state: dict | None):
        import ray.train

        if state is None:  # every rank reports; rank 0 attaches the checkpoint
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, "state.pt"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def ray_train_worker(job: dict):
    """The function each Ray Train worker runs (the job travels as a plain dict)."""
    job = Job(**job)
    t = job.training
    train_loop(job, RayContext(t.cpus_per_worker, t.gpus_per_worker))


def execute(job: Job, *, callbacks: list | None = None, context=None) -> list:
    """Run the training loop of `job` in this process (workers=0; it checkpoints and reports through
    `context`, by default a `LocalContext`) or as a Ray Train run with `workers` workers (`callbacks`
    are its RunConfig's); returns the per-epoch metrics.

    A Ray Train run is named after `job.run_dir`, so running it again resumes from its last checkpoint.
    """
    t = job.training
    if t.workers == 0:  # a streamed run is connected to Ray already (prepare, or a Tune trial)
        return train_loop(job, context or LocalContext(job.run_dir))

    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchConfig, TorchTrainer

    connect()  # a no-op inside a Tune trial or after `prepare`
    _, per_worker = resources(t)
    parent, name = job.run_dir.rsplit("/", 1)
    trainer = TorchTrainer(
        ray_train_worker, train_loop_config=job.as_plain(),
        torch_config=TorchConfig(backend=None if t.backend == "auto" else t.backend),
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.gpus_per_worker > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=parent, callbacks=callbacks,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             logging_config=LoggingConfig(log_level="WARNING"),
                             # RAYGAP_* settings (such as the test fault switch) reach the workers too
                             worker_runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                                              if k.startswith("RAYGAP_")}}))
    try:
        with ctrl_c_stays_raygaps():
            trainer.fit()
    except WorkerGroupError as err:
        # A mistake of the user's raised on a worker (bad data, divergence) stays one clear line.
        cause = worker_error(err)
        if isinstance(cause, UserError):
            raise cause from None
        raise
    return checkpoint.load(layout.model(job.run_dir))[1]["meta"]["history"]


def worker_error(err):
    """The exception a worker of a failed Ray Train run raised (the first rank's), else `err` itself."""
    for failure in getattr(err, "worker_failures", {}).values():
        return getattr(failure, "cause", failure)
    return err


def free_memory() -> None:
    """Give back what finished runs left in this process: objects that reference cycles keep alive, then
    the CUDA blocks PyTorch's caching allocator still holds. Tune's reuse_actors keeps a trial's process
    for the next trial (ray #30414), which would otherwise allocate on top of the previous trial's memory."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the natural model, cached --------------------------------------------------------------------

# Settings that change where and how fast training runs, not the model it produces.
EXECUTION_KEYS = ("workers", "gpus_per_worker", "cpus_per_worker", "max_failures", "compile", "channels_last")
DATA_EXECUTION_KEYS = ("download", "resident", "eps", "decode_cpus", "decoders")


def natural_key(cfg) -> str:
    """The natural model's cache key: everything that shapes it (data, model, the natural-training
    settings), nothing that does not (workers, devices, decoding CPUs). A key added since (schema.LATER_KEYS)
    counts only away from its default, so that a model cached before it existed is still found."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data).items()
            if k not in DATA_EXECUTION_KEYS and (k != "root" or cfg.data.name == "folder")}
    train = {k: v for k, v in OmegaConf.to_container(cfg.pretrain).items() if k not in EXECUTION_KEYS}
    if train["keep"] == "last":  # the only choice before the key existed: models cached then keep their key
        del train["keep"]
    return digest(without_later_keys({"data": data, "model": OmegaConf.to_container(cfg.model), "pretrain": train}))


def natural_path(cfg) -> str:
    return layout.model(layout.pretrained(cfg.storage, natural_key(cfg)))


def natural_model(cfg) -> dict:
    """The natural model for cfg's data and model: from the cache, or trained now and cached."""
    path = natural_path(cfg)
    if storage.exists(path):
        print(f"natural pre-trained model found in the cache: {path}", flush=True)
        return {"checkpoint": path, "cached": True}
    prepare(cfg.pretrain, streamed=cfg.data if stream.streamed(cfg.data) else None)
    run_dir = path.rsplit("/", 1)[0]
    print(f"natural pre-training of {cfg.model.name} on {cfg.data.name} for {cfg.pretrain.epochs} epochs "
          f"(cached as {run_dir})", flush=True)
    history = execute(Job(as_dict(cfg), "natural", "pretrain", None, run_dir, label="pretrain"))
    storage.write_bytes(layout.run_config(run_dir), OmegaConf.to_yaml(cfg).encode())
    return {"checkpoint": path, "cached": False, "metrics": history[-1]}
