"""Natural pre-training, cached: `python -m raygap.pretrain data=... model=... train.epochs=... train.seed=...`.

The checkpoint lies under `${storage}/pretrained/<key>/model.pt`, where the key hashes everything that
shapes the model (data, model, the natural-training settings) and nothing that does not (workers,
devices), and is reused whenever the same key is asked for again. In this command `train.*` is short
for `pretrain.*`: the settings that `raygap.train` and `raygap.tune` use when they pre-train.
Prints the checkpoint path as its last line.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from raygap import storage
from raygap.config import digest

# Settings that change where and how fast training runs, not the model it produces.
EXECUTION_KEYS = ("workers", "gpus_per_worker", "cpus_per_worker", "max_failures", "compile", "channels_last")


def cache_key(cfg) -> str:
    data = {k: v for k, v in OmegaConf.to_container(cfg.data).items()
            if k not in ("download", "resident", "eps") and (k != "root" or cfg.data.name == "folder")}
    train = {k: v for k, v in OmegaConf.to_container(cfg.pretrain).items() if k not in EXECUTION_KEYS}
    return digest({"data": data, "model": OmegaConf.to_container(cfg.model), "pretrain": train})


def checkpoint_path(cfg) -> str:
    return storage.join(cfg.storage, "pretrained", cache_key(cfg), "model.pt")


def run(cfg) -> dict:
    """The natural model for cfg's data and model: from the cache, or trained now and cached."""
    from raygap.train import execute, start_ray

    path = checkpoint_path(cfg)
    if storage.exists(path):
        print(f"natural pre-trained model found in the cache: {path}", flush=True)
        return {"checkpoint": path, "cached": True}
    start_ray(cfg.pretrain)
    run_dir = path.rsplit("/", 1)[0]
    print(f"natural pre-training of {cfg.model.name} on {cfg.data.name} for {cfg.pretrain.epochs} epochs "
          f"(cached as {run_dir})", flush=True)
    history = execute(cfg, stage="pretrain", start=None, run_dir=run_dir, label="pretrain")
    storage.write_bytes(storage.join(run_dir, "config.yaml"), OmegaConf.to_yaml(cfg).encode())
    return {"checkpoint": path, "cached": False, "metrics": history[-1]}


def _train_is_pretrain(override: str) -> str:
    return "pretrain." + override[len("train."):] if override.startswith("train.") else override


def main():
    from raygap.cli import entry_point

    entry_point(run, last_line=lambda result: result["checkpoint"], doc=__doc__, rewrite=_train_is_pretrain)


if __name__ == "__main__":
    main()
