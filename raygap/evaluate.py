"""Robust evaluation of a checkpoint: `python -m raygap.evaluate checkpoint=PATH eval.attacks=[...] eval.n=N`.

Evaluates the exported model in eval mode and fp32 on the first `eval.n` examples of the test split,
prints a table and writes a JSON: clean accuracy, each attack's own accuracy, and `robust_acc`, the
per-example worst case over every attack run (an example counts only if it is classified correctly,
unattacked and under each attack, as RobustBench and AutoAttack count). With `eval.format=robustbench`
it also writes RobustBench's `model_info` JSON beside it.
"""

from __future__ import annotations

from raygap.cli import entry_point
from raygap.robustness import evaluate_checkpoint


def main():
    entry_point(evaluate_checkpoint, last_line=lambda result: result["out"], doc=__doc__)


if __name__ == "__main__":
    main()
