"""Natural pre-training, cached: `python -m raygap.pretrain data=... model=... train.epochs=... train.seed=...`.

The checkpoint lies under `${storage}/pretrained/<key>/model.pt`, where the key hashes everything that
shapes the model (data, model, the natural-training settings) and nothing that does not (workers,
devices), and is reused whenever the same key is asked for again (`runner.natural_model`, which
`raygap.train` and `raygap.tune` call too). In this command `train.*` is short for `pretrain.*`: the
settings that `raygap.train` and `raygap.tune` use when they pre-train. Prints the checkpoint path as
its last line.
"""

from __future__ import annotations

from raygap import runner
from raygap.cli import entry_point


def _train_is_pretrain(override: str) -> str:
    return "pretrain." + override[len("train."):] if override.startswith("train.") else override


def main():
    entry_point(runner.natural_model, last_line=lambda result: result["checkpoint"], doc=__doc__,
                rewrite=_train_is_pretrain)


if __name__ == "__main__":
    main()
