"""A schedule searched by population-based training against the best fixed schedule (issue 31): AFD on the
CPU CIFAR-10 setting (`afd_pbt_cifar10_cpu`: smallcnn from its natural model, 4 epochs of PGD-5 on 5,000
training images, 1,000 validation images), per seed two searches of the same space at the same compute:

- PBT: a population of 8 whose learning rate, weight decay, training epsilon and alignment weight are
  exploited and explored after every epoch (tune.scheduler.name=pbt);
- fixed: 8 trials of the space's default sampler, each at one setting for all 4 epochs, none stopped
  early (tune.scheduler.name=fifo), so both spend 8 x 4 epochs.

Both export their trials' last epoch (train.keep=last: a PBT trial's best epoch may be of another lineage,
and the fixed side gets the same rule) and choose their finalist on validation alone; every finalist is
attacked with clean, PGD-20 and the standard AutoAttack on the same first 1,000 carved test images, and
the difference comes with a paired 95% interval over the images and the seeds (raygap.compare's tables
and printout, under <storage>/<name>/).

    python benchmarks/pbt.py data.root=~/cifar10-jpeg storage=~/raygap-pbt [seeds=[0,1,2]]

Re-running the same command resumes. Any override of raygap.compare applies.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from omegaconf import OmegaConf  # noqa: E402

from raygap import compare  # noqa: E402
from raygap.cli import entry_point  # noqa: E402
from raygap.schema import as_dict  # noqa: E402

SEARCH = "afd_pbt_cifar10_cpu"
SCHEDULERS = {"pbt": "PBT schedule", "fifo": "best fixed schedule"}


@dataclass
class Schedule(compare.Arm):
    """One search of AFD at one seed: PBT's population, or fixed settings per trial."""

    scheduler: str = "pbt"

    @property
    def label(self) -> str:
        return f"afd, {SCHEDULERS[self.scheduler]}"

    @property
    def name(self) -> str:
        return f"afd-{'pbt' if self.scheduler == 'pbt' else 'fixed'}-seed{self.seed}"


def run(cfg) -> dict:
    space, arms = compare.own_space(as_dict(cfg.tune.space), "afd"), []
    for seed in cfg.compare.seeds:
        for scheduler in SCHEDULERS:
            searched = OmegaConf.merge(cfg, {"tune": {"scheduler": {"name": scheduler}}})
            arms.append(Schedule("afd", True, seed, compare.arm_config(searched, "afd", seed, space), scheduler))
    return compare.run_arms(cfg, cfg.name, arms, SEARCH)


def main(argv=None) -> dict:
    """raygap's command line (bad input: one line, exit 2), with this benchmark's name and seeds by default."""
    return entry_point(run, last_line=lambda result: result["folder"], doc=__doc__, config_name=SEARCH,
                       rewrite=compare.short_keys,
                       argv=["name=afd-pbt", "compare.seeds=[0,1,2]", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
