"""What AFD's weight decay rule costs (issue 29): the decay its official code really applied (3x on every
parameter but D2's, as SGD in PyTorch < 1.5 added it into the gradient once per optimiser:
`method.update=official`) against the 2x of a straight port to today's PyTorch (`official_torch2`).

AFD at its defaults, untuned, in the CPU CIFAR-10 setting of the comparison (`defences_cifar10_cpu`: 4
epochs of PGD-5 fine-tuning on 5,000 training images of the JPEG tree, smallcnn, from the comparison's
natural model), one run per rule and seed; every run attacked with clean, PGD-20 and the standard
AutoAttack on the same first 1,000 carved test images. Prints each rule's figures (means over the seeds)
and the paired difference with a 95% interval (bootstrap over the test images and the seeds), through
raygap.compare's tables: `arms`, `differences` and `examples` under <storage>/<name>/.

    python benchmarks/decay.py data.root=~/cifar10-jpeg storage=~/raygap-decay      # seeds=[0,1] by default

Re-running the same command resumes: trained runs and their evaluations are read back. Any override of
`raygap.compare` applies (the search space's `tune.space` is not used: both arms are untuned).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raygap import compare  # noqa: E402
from raygap.cli import entry_point  # noqa: E402

SEARCH = "defences_cifar10_cpu"  # its data, model, budget and final evaluation; no search runs
RULES = {"official": "3x", "official_torch2": "2x"}


@dataclass
class Rule(compare.Arm):
    """AFD at its defaults under one update rule, at one seed: an untuned arm of the comparison's tables."""

    update: str = "official"

    @property
    def label(self) -> str:
        return f"afd, decay {RULES[self.update]} ({self.update})"

    @property
    def name(self) -> str:
        return f"afd-{self.update}-seed{self.seed}"


def run(cfg) -> dict:
    rules = [Rule("afd", False, seed, compare.arm_config(cfg, "afd", seed, {}), update)
             for seed in cfg.compare.seeds for update in RULES]
    for rule in rules:
        rule.cfg.method.update = rule.update
    return compare.run_arms(cfg, cfg.name, rules, SEARCH)


def main(argv=None) -> dict:
    """raygap's command line (bad input: one line, exit 2), with this benchmark's name and seeds by default."""
    return entry_point(run, last_line=lambda result: result["folder"], doc=__doc__, config_name=SEARCH,
                       rewrite=compare.short_keys,
                       argv=["name=afd-decay", "compare.seeds=[0,1]", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
