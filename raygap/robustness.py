"""Robust accuracy as the field reports it: each attack's own accuracy and the per-example worst case
over all of them, in fp32 (`worst_case`), and the evaluation of a checkpoint on the test split with its
JSON and RobustBench's model_info (`evaluate_checkpoint`, the `raygap.evaluate` command and the search's
finalists)."""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager

import torch

from raygap import checkpoint as ckpt
from raygap import data, storage, stream
from raygap.attacks import NORMS, AutoAttackLog, accuracy_key, correct_mask, describe, make_attack
from raygap.errors import UserError
from raygap.progress import eta


def worst_case(model, split: data.Split, attacks: dict, batch_size: int, seed: int, progress=print) -> dict:
    """Each attack's own accuracy and the per-example worst case over all of them.

    attacks: {name: attack or None (clean)}. An example the model gets wrong unattacked is wrong under
    every attack, so each attack runs only on the examples classified correctly (AutoAttack's own
    attacks, inside it, only on those still robust). Every attack starts from `seed`, so its figure does
    not depend on which attacks ran before it. An attack over several batches reports each batch with an
    ETA (a standard AutoAttack of thousands of examples runs for hours). Returns {"accuracy": {name:
    fraction}, "robust": fraction of examples correct under every attack, "seconds": {name: s},
    "attacked": count, "correct": {name: bool tensor per example, and "robust": correct under all}}.
    """
    clean = correct_mask(model, split, None, batch_size).cpu()
    index = clean.nonzero().squeeze(1)
    attacked = data.Split(split.x[index], split.y[index])
    robust = clean.clone()
    report = {"accuracy": {}, "seconds": {}, "attacked": len(index), "correct": {}}
    progress(f"  attacking the {len(index)} of {len(split)} examples classified correctly")
    for name, attack in attacks.items():
        torch.manual_seed(seed)
        start = time.perf_counter()

        def batch_done(done, name=name, start=start):
            if done < len(index):
                elapsed = time.perf_counter() - start
                left = eta(elapsed / done * (len(index) - done))
                progress(f"  {name:<12} {done} of {len(index)} attacked ({elapsed:.1f} s)  eta {left}")

        survived = clean.clone()
        if attack is not None:
            survived[index] = correct_mask(model, attacked, attack, batch_size, after_batch=batch_done).cpu()
        robust &= survived
        report["correct"][name] = survived
        report["accuracy"][name] = survived.sum().item() / len(split)
        report["seconds"][name] = time.perf_counter() - start
        progress(f"  {name:<12} {100 * report['accuracy'][name]:6.2f}%   ({report['seconds'][name]:.1f} s)")
    report["robust"] = robust.sum().item() / len(split)
    report["correct"]["robust"] = robust
    return report


@contextmanager
def full_fp32():
    """fp32 arithmetic throughout: on CUDA, PyTorch would run fp32 convolutions in TF32 (10-bit mantissa)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


ARCHITECTURES = {"resnet18": "ResNet-18", "preact_resnet18": "PreActResNet-18", "wrn34_10": "WideResNet-34-10",
                 "smallcnn": "SmallCNN"}


def model_info(result: dict, info) -> dict:
    """RobustBench's model_info JSON for `result`, its keys in the order of their files; `info` holds what
    raygap cannot know (link, name, authors, venue: empty until given) and may override the rest."""
    def percent(fraction: float) -> str:
        return f"{100 * fraction:.2f}"

    fraction = result["eps"] * 255
    eps = f"{round(fraction)}/255" if result["threat_model"] == "Linf" and math.isclose(fraction, round(fraction)) \
        else f"{result['eps']:g}"
    return {"link": info.link, "name": info.name, "authors": info.authors, "additional_data": info.additional_data,
            "number_forward_passes": 1,  # an exported raygap model is one deterministic forward pass
            "dataset": result["dataset"], "venue": info.venue,
            "architecture": ARCHITECTURES.get(result["architecture"], result["architecture"]), "eps": eps,
            "clean_acc": percent(result["clean_acc"]),
            "reported": f"{float(info.reported):.2f}" if info.reported else percent(result["autoattack_acc"]),
            **({"footnote": info.footnote} if info.footnote else {}),
            "autoattack_acc": percent(result["autoattack_acc"]), "unreliable": info.unreliable}


def evaluate_checkpoint(cfg) -> dict:
    """Evaluate `cfg.checkpoint` on the test split; returns (and writes) the result dictionary."""
    if not cfg.checkpoint:
        raise UserError("give the checkpoint to evaluate: checkpoint=PATH")
    path = storage.absolute(cfg.checkpoint)
    model, payload = ckpt.load(path)  # eval mode, fp32
    dataset = stream.load_dataset(cfg.data)
    arch = payload["arch"]
    ckpt.check_compatible(arch, path, arch["model"], dataset.in_shape, dataset.num_classes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).requires_grad_(False)
    test = dataset.test
    n = min(cfg.eval.n or len(test), len(test))
    if cfg.eval.n > len(test):
        print(f"eval.n={cfg.eval.n} is more than the {len(test)} test examples of {cfg.data.name}: "
              f"evaluating all {len(test)}", flush=True)
    subset = stream.head(test, n)
    attacks = {name: make_attack(name, eps=cfg.eval.eps, norm=cfg.eval.norm, num_classes=dataset.num_classes,
                                 seed=cfg.eval.seed) for name in dict.fromkeys(["clean", *cfg.eval.attacks])}
    method = payload.get("meta", {}).get("method") or payload["config"]["method"]["name"]
    result = {"architecture": arch["model"], "checkpoint": path, "method": method, "dataset": cfg.data.name,
              "threat_model": NORMS[cfg.eval.norm], "eps": cfg.eval.eps, "n_examples": n,
              "precision": "fp32", "seed": cfg.eval.seed,
              "attacks": {name: describe(attack) for name, attack in attacks.items()}}
    print(f"evaluating {path} ({method}) on the first {n} test examples of {cfg.data.name}, "
          f"{result['threat_model']} eps={cfg.eval.eps:.4g}, fp32", flush=True)
    # AutoAttack's progress goes to stderr: live from a Ray task too, whose stdout (this table) is returned
    with full_fp32(), AutoAttackLog(progress=lambda line: print(line, file=sys.stderr, flush=True)) as warnings:
        report = worst_case(model, subset, attacks, cfg.eval.batch_size, cfg.eval.seed,
                            progress=lambda line: print(line, flush=True))
    result.update({accuracy_key(name): acc for name, acc in report["accuracy"].items()})
    result["robust_acc"] = report["robust"]
    result["attacked"] = report["attacked"]
    result["seconds"] = {name: round(s, 2) for name, s in report["seconds"].items()}
    result["warnings"] = warnings
    print(f"  {'robust':<12} {100 * result['robust_acc']:6.2f}%   (per example, the worst case over "
          f"{', '.join(attacks)})", flush=True)
    for warning in warnings:
        print(f"  warning (AutoAttack's checks): {warning}", flush=True)
    out = cfg.eval.out or storage.join(path.rsplit("/", 1)[0], "eval.json")
    storage.write_bytes(out, json.dumps(result, indent=2).encode())
    result["out"] = out
    # per example, for paired comparisons (the examples table); not in the JSON
    result["examples"] = {"label": subset.y.tolist(), "correct": {
        accuracy_key(name).removesuffix("_acc"): mask.tolist() for name, mask in report["correct"].items()}}
    if cfg.eval.format == "robustbench":
        info_path = out.removesuffix(".json") + ".model_info.json"
        storage.write_bytes(info_path, (json.dumps(model_info(result, cfg.eval.info), indent=2) + "\n").encode())
        missing = [key for key in ("link", "name", "authors", "venue") if not cfg.eval.info[key]]
        print(f"RobustBench model_info: {info_path}" + (f" (fill in {', '.join(missing)}, or give them as "
              f"eval.info.<key>=...)" if missing else ""), flush=True)
    return result
