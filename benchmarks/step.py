"""One training step of every method, beside two peer PGD-AT loops and each method's lean bound.

    python benchmarks/step.py [--model smallcnn] [--shape 1,28,28] [--batch 128] [--steps 10]
                              [--repeats 20] [--device auto|cpu|cuda] [--bf16] [--channels-last]
                              [--cudnn-benchmark] [--compile]

Everything is timed side by side in one process on the same random batch, median of `--repeats` after
warm-up:
- raygap: `raygap.loop.train_step`, the step the training loop runs, for each method;
- plain PyTorch PGD-AT: the obvious loop, whose attack steps call `loss.backward()` on the model (and so
  also compute every weight gradient, k times);
- torchattacks PGD-AT: torchattacks' PGD for the attack, then the same training update (when torchattacks
  is installed: it is not a dependency, since it pins requests 2.25; `pip install --no-deps torchattacks`);
- the lean bound of each method: the passes it cannot avoid, each timed alone here on the plain
  classifier (k forward + input-gradient passes, the attack's extra clean forwards, the loss's forward
  + full backward pairs, a frozen teacher's forwards, one optimiser step), summed with the counts the
  method declares (`Objective.attacked`, `attack_clean_forwards`, `training_passes`, `teacher_forwards`).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import time

import torch
import torch.nn.functional as F

from raygap.attacks import autocast, make_attack
from raygap.loop import compile_mode, train_step
from raygap.methods import METHODS
from raygap.models import build_model


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(5):  # warm-up: allocator, kernels, lazy init, compilation and CUDA graph recording
        fn()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def lean_parts(model, x, y, optimizer, bf16: bool) -> dict:
    """Each unavoidable pass of the plain classifier, as a function to time alone."""
    device = x.device

    def forward_input_gradient():  # one attack step: forward, then the gradient w.r.t. the input only
        model.eval()
        delta = torch.zeros_like(x, requires_grad=True)
        with autocast(device, bf16):
            loss = F.cross_entropy(model(x + delta).float(), y)
        torch.autograd.grad(loss, [delta])

    def forward_no_grad():
        model.eval()
        with torch.no_grad(), autocast(device, bf16):
            model(x)

    def forward_full_backward():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()

    forward_full_backward()  # the optimiser step needs gradients to apply
    return {"forward + input gradient": forward_input_gradient, "forward (no grad)": forward_no_grad,
            "forward + full backward": forward_full_backward, "optimiser step": optimizer.step}


def plain_pgd_at(model, optimizer, x, y, eps, alpha, steps, bf16):
    """The obvious PyTorch loop: each attack step calls loss.backward() on the model."""
    def step():
        model.eval()
        delta = torch.empty_like(x).uniform_(-eps, eps).requires_grad_()
        for _ in range(steps):
            with autocast(x.device, bf16):
                loss = F.cross_entropy(model(x + delta).float(), y)
            loss.backward()
            with torch.no_grad():
                delta += alpha * delta.grad.sign()
                delta.clamp_(-eps, eps)
                delta.copy_((x + delta).clamp(0, 1) - x)
            delta.grad = None
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(x.device, bf16):
            loss = F.cross_entropy(model(x + delta.detach()).float(), y)
        loss.backward()
        optimizer.step()
    return step


def torchattacks_pgd_at(model, optimizer, x, y, eps, alpha, steps, bf16):
    import torchattacks

    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)  # sets eval mode itself

    def step():
        with autocast(x.device, bf16):
            x_adv = attack(x, y)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(x.device, bf16):
            loss = F.cross_entropy(model(x_adv).float(), y)
        loss.backward()
        optimizer.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--shape", default="1,28,28", help="C,H,W of the images (3,32,32 for CIFAR)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the training attack")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="images and weights channels-last (CUDA)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN picks its fastest algorithms (CUDA)")
    parser.add_argument("--compile", action="store_true",
                        help="raygap's steps compiled as train.compile=true does (CUDA graphs on a GPU)")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "pgd_at"),
                        help="pgd_at is vaft's step from random weights: the same cost")
    args = parser.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    x = torch.rand(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    mean, std = [0.5] * shape[0], [0.25] * shape[0]
    natural = build_model(args.model, shape, 10, mean, std).to(device)
    if args.channels_last:
        x, natural = x.contiguous(memory_format=torch.channels_last), natural.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    alpha = 2.5 * args.eps / args.steps
    attack = make_attack("pgd", eps=args.eps, steps=args.steps)

    def sgd(module):
        return torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                               weight_decay=5e-4)

    def timed(fn):
        return median_seconds(fn, args.repeats, device)

    plain = copy.deepcopy(natural)
    parts = {name: timed(fn) for name, fn in lean_parts(plain, x, y, sgd(plain), args.bf16).items()}

    rows = []
    names = args.methods.split(",")
    for name in names if "vaft" in names else ["vaft", *names]:  # vaft: the peers' reference
        method = METHODS[name]
        objective = method(copy.deepcopy(natural), method.Params(), attack).to(device)
        module = objective.module
        optimizer = sgd(module)
        mode = compile_mode(args.compile, device, world=1)
        torch.compiler.reset()  # a fresh cache per method
        net = torch.compile(module, mode=mode) if mode else module
        bound = (args.steps * method.attacked * parts["forward + input gradient"]
                 + (method.attack_clean_forwards + method.teacher_forwards) * parts["forward (no grad)"]
                 + method.training_passes * parts["forward + full backward"] + parts["optimiser step"])
        step = lambda: train_step(objective, net, net, optimizer, x, y, args.bf16, compiled=mode is not None)  # noqa: E731
        rows.append((f"raygap {name}", timed(step), bound))
    _, vaft, vaft_bound = next(row for row in rows if row[0] == "raygap vaft")
    peers = [("plain PyTorch PGD-AT", plain_pgd_at)]
    if importlib.util.find_spec("torchattacks"):
        peers.append(("torchattacks PGD-AT", torchattacks_pgd_at))
    for label, make in peers:
        model = copy.deepcopy(natural)
        rows.append((label, timed(make(model, sgd(model), x, y, args.eps, alpha, args.steps, args.bf16)), vaft_bound))

    threads = f" ({torch.get_num_threads()} threads)"
    where = f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else threads
    print(f"\n{args.model}, batch {args.batch} of {'x'.join(map(str, shape))}, PGD-{args.steps}, {device}{where}"
          f"{', bf16' if args.bf16 else ''}{', channels-last' if args.channels_last else ''}"
          f"{', cudnn.benchmark' if args.cudnn_benchmark else ''}{', compiled' if args.compile else ''}"
          f", median of {args.repeats}\n")
    print("| step | ms | lean bound ms | ratio to bound | images/s | vs raygap vaft |")
    print("|---|---|---|---|---|---|")
    for label, seconds, bound in rows:
        print(f"| {label} | {seconds * 1e3:.1f} | {bound * 1e3:.1f} | {seconds / bound:.2f} | "
              f"{args.batch / seconds:.0f} | {seconds / vaft:.2f} |")
    print("\n| pass (timed alone) | ms |\n|---|---|")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds * 1e3:.2f} |")


if __name__ == "__main__":
    main()
