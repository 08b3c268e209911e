"""The thin command-line layer shared by every entry point: Hydra overrides in, one clear line on error."""

from __future__ import annotations

import sys
from typing import Callable

from omegaconf import OmegaConf

from raygap import config
from raygap.errors import UserError

USAGE = """
Arguments are Hydra overrides, the same in every entry point: key=value (train.epochs=5),
group=option (data=cifar10 model=resnet18 method=trades), lists as eval.attacks=[clean,pgd20].
  --cfg      print the resolved config (every key you can set) and exit
  --help     this text
"""


def entry_point(run: Callable, last_line: Callable, doc: str = "", config_name: str = "raygap",
                rewrite: Callable[[str], str] | None = None, argv: list | None = None):
    """Parse overrides (`argv`, else the command line's), validate the config, call `run(cfg)`, print
    `last_line(result)` last and return the result.

    A UserError (bad input) becomes one line on stderr and exit status 2, with no traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print((doc or "").strip() + "\n" + USAGE)
        return
    overrides = [a for a in argv if a != "--cfg"]
    if rewrite:
        overrides = [rewrite(o) for o in overrides]
    try:
        cfg = config.load(overrides, config_name)
        if "--cfg" in argv:
            print(OmegaConf.to_yaml(cfg))
            return
        result = run(cfg)
    except UserError as err:
        _stop_ray()
        print(f"raygap: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        _stop_ray()
        print("raygap: interrupted; run the same command again to resume where it stopped", file=sys.stderr)
        raise SystemExit(130) from None
    print(last_line(result), flush=True)
    return result


def _stop_ray() -> None:
    """Disconnect from Ray, if connected: the worker lines it still forwards come out before our last line."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
