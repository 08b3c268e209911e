"""Training objectives, one file each (see base.py for the contract); `METHODS` maps `method=<name>` to its class.

Every module of this package is imported here, so that its `@register` runs: a new defence needs no edit
outside its own file.
"""

import importlib
import pkgutil

from omegaconf import OmegaConf

from raygap.methods.base import METHODS

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def params_of(node):
    """The `method` config node as its method's Params dataclass (attribute access to every key, even
    one such as `update` that a DictConfig would answer with its own method)."""
    return METHODS[node.name].Params(**OmegaConf.to_container(node, resolve=True))


def from_scratch(cfg) -> bool:
    """Whether fine-tuning starts from random weights: `init`, or with init=auto the method's own start."""
    if cfg.init == "auto":
        return METHODS[cfg.method.name].from_scratch
    return cfg.init == "scratch"
