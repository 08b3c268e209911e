"""Training objectives, one file each; the registry maps `method=<name>` to its module.

Each module has `Params` (its hyperparameters, a dataclass), `check(params)` (range errors) and
`Objective` (what is trained, how x' is made, the loss and the export; see base.Objective).
"""

from omegaconf import OmegaConf

from raygap.methods import afd, drrdn, mart, natural, pgd_at, trades, vaft

METHODS = {m.Params.name: m for m in (natural, vaft, pgd_at, trades, mart, afd, drrdn)}


def params_of(node):
    """The `method` config node as its method's Params dataclass (attribute access to every key, even
    one such as `update` that a DictConfig would answer with its own method)."""
    return METHODS[node.name].Params(**OmegaConf.to_container(node, resolve=True))


def from_scratch(cfg) -> bool:
    """Whether fine-tuning starts from random weights: `init`, or with init=auto the method's own start."""
    if cfg.init == "auto":
        return METHODS[cfg.method.name].Objective.from_scratch
    return cfg.init == "scratch"
