"""One adversarial fine-tuning run: `python -m raygap.train method=afd data=... model=... train.epochs=...`.

Starts from the cached natural model (pre-training it first when missing) unless the method trains
from scratch or `pretrained=PATH` names another start, trains, writes the exported classifier to
`${storage}/${name}/model.pt` and prints that path as its last line. Running the same command again
resumes an interrupted run from its last epoch, or returns at once when it is finished.
"""

from __future__ import annotations

from raygap import storage
from raygap.config import as_dict, digest
from raygap.methods import METHODS


def run_name(cfg) -> str:
    """The run's folder name: `name` when given, else derived from the whole config (so re-runs find it)."""
    return cfg.name or f"{cfg.method.name}-{cfg.data.name}-{cfg.model.name}-{digest(cfg)}"


def execute(cfg, *, stage: str, start: str | None, run_dir: str, label: str) -> dict:
    """Run the training loop for `stage` in this process (workers=0) or on a Ray Train worker group."""
    from raygap.loop import train_loop

    job = {"cfg": as_dict(cfg), "stage": stage, "start": start, "run_dir": run_dir, "label": label}
    return train_loop(job)


def run(cfg) -> dict:
    from raygap import pretrain

    run_dir = storage.join(cfg.storage, run_name(cfg))
    model_path = storage.join(run_dir, "model.pt")
    if storage.exists(model_path):
        print(f"run {run_dir} is finished already", flush=True)
        return {"checkpoint": model_path, "resumed": False}
    start = None
    if not METHODS[cfg.method.name].Objective.from_scratch:
        start = cfg.pretrained or pretrain.run(cfg)["checkpoint"]
    print(f"training {cfg.method.name} on {cfg.data.name} with {cfg.model.name} for {cfg.train.epochs} epochs "
          f"in {run_dir}", flush=True)
    metrics = execute(cfg, stage="train", start=start, run_dir=run_dir, label=cfg.method.name)
    return {"checkpoint": model_path, "metrics": metrics}


def main():
    from raygap.cli import entry_point

    entry_point(run, last_line=lambda result: result["checkpoint"], doc=__doc__)


if __name__ == "__main__":
    main()
