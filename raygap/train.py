"""One adversarial fine-tuning run: `python -m raygap.train method=afd data=... model=... train.epochs=...`.

Starts from the cached natural model (pre-training it first when missing) unless the run trains from
scratch (`init=scratch`, or a method that always does) or `pretrained=PATH` names another start,
trains, writes the exported classifier to `${storage}/${name}/model.pt` and prints that path as its
last line. Running the same command again resumes an interrupted run from its last epoch, or returns
at once when it is finished.
"""

from __future__ import annotations

import os

from raygap import checkpoint, storage
from raygap.config import as_dict, digest
from raygap.errors import UserError
from raygap.methods import METHODS


def run_name(cfg) -> str:
    """The run's folder name: `name` when given, else derived from the whole config (so re-runs find it)."""
    return cfg.name or f"{cfg.method.name}-{cfg.data.name}-{cfg.model.name}-{digest(cfg)}"


def from_scratch(cfg) -> bool:
    """Whether fine-tuning starts from random weights: `init`, or with init=auto the method's own start."""
    if cfg.init == "auto":
        return METHODS[cfg.method.name].Objective.from_scratch
    return cfg.init == "scratch"


def resources(t) -> tuple[dict, dict]:
    """(what one run of TrainConfig `t` needs in total, what one of its workers needs on one node)."""
    per_worker = {"CPU": t.cpus_per_worker, "GPU": t.gpus_per_worker}
    return {k: v * max(t.workers, 1) for k, v in per_worker.items()}, per_worker


def start_ray(*trainings) -> None:
    """Check the resources of the given TrainConfigs and connect to Ray, if any of them uses Ray Train."""
    from raygap import session

    distributed = [t for t in trainings if t.workers > 0]
    if not distributed:
        return
    for t in distributed:
        session.check_resources(*resources(t))
    session.connect()


def execute(cfg, *, stage: str, start: str | None, run_dir: str, label: str, experiment_dir: str | None = None,
            trial_id: str | None = None, callbacks: list | None = None, context=None) -> list:
    """Run the training loop for `stage` in this process (workers=0; it checkpoints and reports through
    `context`, by default `loop.LocalContext`) or as a Ray Train run with `workers` workers (DDP: gloo on
    CPU, nccl on GPU; `callbacks` are its RunConfig's); returns the per-epoch metrics.

    A Ray Train run is named after `run_dir`, so running it again resumes from its last checkpoint.
    """
    from raygap.loop import ray_train_loop, train_loop

    job = {"cfg": as_dict(cfg), "stage": stage, "start": start, "run_dir": run_dir, "label": label,
           "experiment_dir": experiment_dir or run_dir, "trial_id": trial_id or run_dir.rsplit("/", 1)[-1]}
    t = cfg[stage]
    if t.workers == 0:
        return train_loop(job, context)

    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchConfig, TorchTrainer

    from raygap import session

    session.connect()  # a no-op inside a Tune trial or after `session.start`
    _, per_worker = resources(t)
    parent, name = run_dir.rsplit("/", 1)
    trainer = TorchTrainer(
        ray_train_loop, train_loop_config=job,
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
        trainer.fit()
    except WorkerGroupError as err:
        # A mistake of the user's raised on a worker (bad data, divergence) stays one clear line.
        cause = worker_error(err)
        if isinstance(cause, UserError):
            raise cause from None
        raise
    return checkpoint.load(storage.join(run_dir, "model.pt"))[1]["meta"]["history"]


def worker_error(err):
    """The exception a worker of a failed Ray Train run raised (the first rank's), else `err` itself."""
    for failure in getattr(err, "worker_failures", {}).values():
        return getattr(failure, "cause", failure)
    return err


def run(cfg) -> dict:
    from raygap import pretrain

    run_dir = storage.join(cfg.storage, run_name(cfg))
    model_path = storage.join(run_dir, "model.pt")
    if storage.exists(model_path):
        print(f"run {run_dir} is finished already", flush=True)
        history = checkpoint.load(model_path)[1]["meta"]["history"]
        return {"checkpoint": model_path, "metrics": history[-1], "history": history}
    start_ray(cfg.pretrain, cfg.train)
    start = None
    if not from_scratch(cfg):
        start = cfg.pretrained or pretrain.run(cfg)["checkpoint"]
    print(f"training {cfg.method.name} on {cfg.data.name} with {cfg.model.name} for {cfg.train.epochs} epochs "
          f"in {run_dir}", flush=True)
    history = execute(cfg, stage="train", start=start, run_dir=run_dir, label=cfg.method.name)
    return {"checkpoint": model_path, "metrics": history[-1], "history": history}


def main():
    from raygap.cli import entry_point

    entry_point(run, last_line=lambda result: result["checkpoint"], doc=__doc__)


if __name__ == "__main__":
    main()
