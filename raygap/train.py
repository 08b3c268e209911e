"""One adversarial fine-tuning run: `python -m raygap.train method=afd data=... model=... train.epochs=...`.

Starts from the cached natural model (pre-training it first when missing) unless the run trains from
scratch (`init=scratch`, or a method that always does) or `pretrained=PATH` names another start,
trains, writes the exported classifier to `${storage}/${name}/model.pt` and prints that path as its
last line. Running the same command again resumes an interrupted run from its last epoch, or returns
at once when it is finished.
"""

from __future__ import annotations

from raygap import checkpoint, layout, runner, storage, stream
from raygap.cli import entry_point
from raygap.loop import Job
from raygap.methods import from_scratch
from raygap.schema import as_dict, name_digest


def run_name(cfg) -> str:
    """The run's folder name: `name` when given, else derived from the whole config (so re-runs find it)."""
    return cfg.name or f"{cfg.method.name}-{cfg.data.name}-{cfg.model.name}-{name_digest(cfg)}"


def run(cfg) -> dict:
    storage.check_writable(cfg.storage)
    streamed = stream.check_tree(cfg.data)
    run_dir = layout.train_run(cfg.storage, run_name(cfg))
    model_path = layout.model(run_dir)
    if storage.exists(model_path):
        print(f"run {run_dir} is finished already", flush=True)
        history = checkpoint.load(model_path)[1]["meta"]["history"]
        return {"checkpoint": model_path, "metrics": history[-1], "history": history}
    runner.prepare(cfg.pretrain, cfg.train, streamed=cfg.data if streamed else None)
    start = None
    if not from_scratch(cfg):
        start = cfg.pretrained or runner.natural_model(cfg)["checkpoint"]
    print(f"training {cfg.method.name} on {cfg.data.name} with {cfg.model.name} for {cfg.train.epochs} epochs "
          f"in {run_dir}", flush=True)
    history = runner.execute(Job(as_dict(cfg), cfg.method.name, "train", start, run_dir))
    return {"checkpoint": model_path, "metrics": history[-1], "history": history}


def main():
    entry_point(run, last_line=lambda result: result["checkpoint"], doc=__doc__)


if __name__ == "__main__":
    main()
