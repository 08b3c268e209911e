"""Robust evaluation of a checkpoint: `python -m raygap.evaluate checkpoint=PATH eval.attacks=[...] eval.n=N`.

Prints a table and writes a RobustBench-style JSON with `clean_acc` and one `<attack>_acc` per attack.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext

import torch

from raygap import checkpoint as ckpt
from raygap import data, storage
from raygap.attacks import make_attack
from raygap.errors import UserError


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def correct_count(model, split: data.Split, attack, batch_size: int, bf16: bool = False) -> torch.Tensor:
    """How many examples of `split` `model` classifies correctly after `attack` (None: clean), as a tensor."""
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(split), batch_size):
        x = data.to_float(split.x[start:start + batch_size].to(device))
        y = split.y[start:start + batch_size].to(device)
        with autocast(device, bf16):
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad():
                correct += (model(x).argmax(1) == y).sum()
    return correct


def run(cfg) -> dict:
    """Evaluate `cfg.checkpoint` on the test split; returns (and writes) the result dictionary."""
    if not cfg.checkpoint:
        raise UserError("give the checkpoint to evaluate: checkpoint=PATH")
    path = storage.absolute(cfg.checkpoint)
    model, payload = ckpt.load(path)
    dataset = data.load(cfg.data)
    arch = payload["arch"]
    ckpt.check_compatible(arch, path, arch["model"], dataset.in_shape, dataset.num_classes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).requires_grad_(False)
    test = dataset.test
    n = min(cfg.eval.n or len(test), len(test))
    subset = data.Split(test.x[:n], test.y[:n])
    torch.manual_seed(cfg.eval.seed)
    result = {"architecture": arch["model"], "checkpoint": path, "dataset": cfg.data.name, "threat_model":
              {"linf": "Linf", "l2": "L2"}[cfg.eval.norm], "eps": cfg.eval.eps, "n_examples": n,
              "method": payload["config"].get("method", {}).get("name", ""), "seconds": {}}
    print(f"evaluating {path} on {n} test examples of {cfg.data.name}, {result['threat_model']} "
          f"eps={cfg.eval.eps:.4g}", flush=True)
    rows = []
    for name in cfg.eval.attacks:
        attack = make_attack(name, eps=cfg.eval.eps, norm=cfg.eval.norm, num_classes=dataset.num_classes)
        start = time.perf_counter()
        accuracy = correct_count(model, subset, attack, cfg.eval.batch_size).item() / n
        seconds = time.perf_counter() - start
        result[f"{name}_acc"] = accuracy
        result["seconds"][name] = round(seconds, 2)
        rows.append((name, accuracy, seconds))
        print(f"  {name:<12} {100 * accuracy:6.2f}%   ({seconds:.1f} s)", flush=True)
    robust = [acc for name, acc, _ in rows if name != "clean"]
    if robust:
        result["robust_acc"] = min(robust)  # the worst case over the attacks run, as RobustBench reports
    out = cfg.eval.out or storage.join(path.rsplit("/", 1)[0], "eval.json")
    storage.write_bytes(out, json.dumps(result, indent=2).encode())
    result["out"] = out
    return result


def main():
    from raygap.cli import entry_point

    entry_point(run, last_line=lambda result: result["out"])


if __name__ == "__main__":
    main()
