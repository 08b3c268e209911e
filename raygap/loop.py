"""The per-worker training loop, shared by natural pre-training and every defence.

`train_loop(job)` is a plain function: it runs in this process (train.workers=0) or, unchanged, on
every worker of a Ray Train run. It holds the data on the training device, makes adversarial examples
on the module in eval mode, steps SGD with the configured schedule, keeps a weight EMA, measures clean
and robust validation accuracy each epoch, reports every epoch with a checkpoint of the whole training
state, and on rank 0 exports the deployable classifier at the end.
"""

from __future__ import annotations

import copy
import io
import math
import os
import signal
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch import nn

from raygap import checkpoint as ckpt
from raygap import data, results, storage
from raygap.attacks import make_attack
from raygap.config import from_dict
from raygap.errors import Diverged
from raygap.evaluate import autocast, correct_count
from raygap.methods import METHODS, params_of
from raygap.models import build_model, forward_flops

# Dense tensor-core peak FLOP/s (bf16, tf32) of common GPUs, for model FLOP utilisation (MFU). fp32 runs
# count against the TF32 peak: PyTorch runs fp32 convolutions in TF32 by default (cudnn.allow_tf32).
# The first key found in the device's name wins (so "H100 PCIe" before "H100", the SXM part). The A10G
# (AWS g5) gets the A10's datasheet figures: AWS publishes none of its own.
PEAK_FLOPS = {"H100 PCIe": (756e12, 378e12), "H100": (989e12, 495e12), "H200": (989e12, 495e12),
              "A100": (312e12, 156e12), "L40S": (362e12, 183e12), "L4": (121e12, 60e12),
              "A10G": (125e12, 62.5e12)}


class EMA:
    """Weight EMA with AFD's warm-up rule: decay = min(max_decay, (t + 1) / (t + 10)) at update t."""

    def __init__(self, module: nn.Module, max_decay: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.max_decay = max_decay
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module):
        decay = min(self.max_decay, (self.updates + 1) / (self.updates + 10))
        self.updates += 1
        mine = [t for t in self._tensors(self.module)]
        theirs = [t for t in self._tensors(module)]
        floats = [(a, b) for a, b in zip(mine, theirs) if a.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1 - decay)
        for a, b in zip(mine, theirs):
            if not a.is_floating_point():
                a.copy_(b)  # counters such as BatchNorm's num_batches_tracked

    @staticmethod
    def _tensors(module):
        return list(module.parameters()) + list(module.buffers())

    def state_dict(self):
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


def lr_factor(t, progress: float) -> float:
    """The learning-rate multiplier at `progress` (0..1) of training for schedule `t.schedule`."""
    if t.schedule == "afd":
        return afd_lr_factor(progress)
    if t.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if t.schedule == "step":
        return t.lr_decay ** sum(progress >= m for m in t.milestones)
    return 1.0


def afd_lr_factor(progress: float) -> float:
    """The official AFD schedule (`adjust_learning_rate` of changzhang777/AFD's tl+sl.py), stretched to
    any length: of 20 epochs, epochs 1-10 at the full rate, x0.8 from epoch 11, halved from epochs 13,
    15, 17 and 19. At 20 epochs it changes at epoch boundaries exactly as the official one does."""
    epoch = progress * 20  # where this step lies on the official 20 epochs; epoch n spans [n - 1, n)
    if epoch < 10 - 1e-9:
        return 1.0
    return 0.8 * 0.5 ** sum(epoch >= start - 1e-9 for start in (12, 14, 16, 18))


class LocalContext:
    """One process, checkpoints in `run_dir/state.pt` (latest only)."""

    rank, world, cpus, node = 0, 1, 1.0, None

    def __init__(self, run_dir: str):
        self.path = storage.join(run_dir, "state.pt")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.gpus = 1.0 if self.device.type == "cuda" else 0.0

    def restore(self):
        if not storage.exists(self.path):
            return None
        return torch.load(io.BytesIO(storage.read_bytes(self.path)), map_location=self.device, weights_only=True)

    def report(self, metrics: dict, state: dict):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        storage.write_bytes(self.path, buffer.getvalue())


class TuneTrialContext(LocalContext):
    """A Tune trial that trains in its own process (train.workers=0). Its checkpoint is `state.pt` in the
    run folder, as for a run in this process: unlike the checkpoint in Tune's last saved experiment
    state, it is always the newest, so a resumed search never trains a finished epoch again. Each
    epoch's metrics go to Tune."""

    def __init__(self, run_dir: str, cpus: float, gpus: float):
        import ray

        super().__init__(run_dir)
        if not gpus:
            self.device = torch.device("cpu")
        self.cpus, self.gpus = cpus, gpus
        self.node = ray.get_runtime_context().get_node_id()

    def report(self, metrics: dict, state: dict):
        import ray.tune

        super().report(metrics, state)
        ray.tune.report(metrics)


class RayContext:
    """A worker of a Ray Train run: rank and device from Ray, checkpoints through `ray.train.report`."""

    def __init__(self, cpus: float, gpus: float):
        import ray
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            self.device = torch.device("cpu")  # a GPU that is only a resource (Ray's fake_multinode nodes)
        self.cpus, self.gpus = cpus, gpus
        self.node = ray.get_runtime_context().get_node_id()

    def restore(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(os.path.join(folder, "state.pt"), map_location=self.device, weights_only=True)

    def report(self, metrics: dict, state: dict | None):
        import ray.train

        if state is None:  # every rank reports; rank 0 attaches the checkpoint
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, "state.pt"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def ray_train_loop(job: dict):
    """The entry point of each Ray Train worker."""
    t = job["cfg"][job["stage"]]
    train_loop(job, RayContext(t["cpus_per_worker"], t["gpus_per_worker"]))


def _test_out_of_memory(job: dict):
    """Test-only: with RAYGAP_TEST_OOM=1, every run of the first trial of a search to start raises an
    out-of-memory error (the trial claims a marker file in the local experiment folder)."""
    if not os.environ.get("RAYGAP_TEST_OOM") or not job.get("trial_id"):
        return
    claim = os.path.join(job["experiment_dir"], ".test-oom-trial")
    try:
        with open(claim, "x") as fh:
            fh.write(job["trial_id"])
    except FileExistsError:
        pass
    with open(claim) as fh:
        if fh.read() == job["trial_id"]:
            raise torch.OutOfMemoryError(f"test fault RAYGAP_TEST_OOM in trial {job['trial_id']}: out of memory")


def _fault_switch(job: dict, rank: int, world: int, epoch: int, batch: int):
    """Test-only: RAYGAP_TEST_KILL=<epoch>:<batch> kills the last rank's process once, mid-epoch."""
    target = os.environ.get("RAYGAP_TEST_KILL")
    if not target or target != f"{epoch + 1}:{batch}" or rank != world - 1:
        return
    marker = storage.join(job["run_dir"], ".test-kill-done")
    if storage.exists(marker):
        return
    storage.write_bytes(marker, b"")
    os.kill(os.getpid(), signal.SIGKILL)


def place(split: data.Split, device: torch.device, resident: str) -> data.Split:
    """The whole split on the training device when it fits (CIFAR-10 takes 150 MB), else in host memory."""
    if resident == "host" or device.type == "cpu":
        return split
    if resident == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        if split.x.numel() > 0.25 * free:
            return data.Split(split.x.pin_memory(), split.y.pin_memory())
    return split.to(device)


def start_model(job: dict, dataset: data.Dataset) -> nn.Module:
    cfg = from_dict(job["cfg"])
    if job.get("start"):
        model, payload = ckpt.load(job["start"])
        ckpt.check_compatible(payload["arch"], job["start"], cfg.model.name, dataset.in_shape, dataset.num_classes)
        return model
    return build_model(cfg.model.name, dataset.in_shape, dataset.num_classes, dataset.mean, dataset.std)


def compile_mode(setting, device: torch.device, world: int) -> str | None:
    """torch.compile's mode for a `compile` setting (auto, true or false), None for eager.

    auto compiles on CUDA only (on a CPU, compiling costs more than it saves on these small steps). One
    process on one GPU gets CUDA graphs (reduce-overhead): at batch 128 an eager PGD step launches
    hundreds of small kernels and the CPU, not the GPU, sets the pace (benchmarks/README.md: 3.2x on an
    H100). DDP keeps the default mode: its gradient hooks run between the graphs.
    """
    setting = str(setting).lower()
    if setting == "false" or (setting == "auto" and device.type != "cuda"):
        return None
    return "reduce-overhead" if device.type == "cuda" and world == 1 else "default"


def train_step(objective, module: nn.Module, net: nn.Module, optimizer, x, y, bf16: bool, compiled: bool = False) -> dict:
    """One step: x' made on `module` (the trained module, maybe compiled) in eval mode, then the
    method's loss on `net` (the module, maybe DDP-wrapped or compiled) in train mode, its backward and
    the optimiser step. Returns the loss parts.

    compiled: `module` is compiled; its attack then runs with the trained weights frozen, since a
    compiled backward computes the gradient of every input that requires one (eager autograd computes
    only what the attack asks for: the input's); without the freeze a compiled step was 1.4x slower.
    """
    frozen = [p for p in module.parameters() if p.requires_grad] if compiled else []
    module.eval()
    for p in frozen:
        p.requires_grad_(False)
    with autocast(x.device, bf16):
        x_adv = objective.adversarial(module, x, y)
    for p in frozen:
        p.requires_grad_(True)
    module.train()
    with autocast(x.device, bf16):
        parts = objective.loss(net, x, y, x_adv)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    optimizer.step()
    return parts


def train_loop(job: dict, context=None) -> dict | None:
    """Train `job["cfg"]` with the settings of node `job["stage"]` (train or pretrain).

    job: {"cfg": plain config, "stage": "train" | "pretrain", "start": checkpoint to start from or None,
    "run_dir": where the exported model goes, "experiment_dir" and "trial_id": where and under which id
    the epochs table gets this run's rows, "label": the name shown in progress lines}.
    Returns the per-epoch metrics (a list of rows) on rank 0, None on the other ranks.
    """
    # A run that diverged once diverges again: its restarts (Ray Train's, Tune's, a re-run of the same
    # command) end at once with the first reason instead of training up to the same NaN.
    diverged = storage.join(job["run_dir"], "diverged.txt")
    if storage.exists(diverged):
        raise Diverged(storage.read_bytes(diverged).decode())
    cfg = from_dict(job["cfg"])
    t = cfg[job["stage"]]
    context = context or LocalContext(job["run_dir"])
    rank, world, device = context.rank, context.world, context.device
    bf16 = device.type == "cuda" and t.precision in ("auto", "bf16")
    channels_last = device.type == "cuda" and t.channels_last
    torch.manual_seed(t.seed)

    dataset = data.load(cfg.data)
    train_split = place(dataset.train, device, cfg.data.resident)
    val = dataset.val if not cfg.eval.val_n else data.Split(dataset.val.x[:cfg.eval.val_n], dataset.val.y[:cfg.eval.val_n])
    val_shard = data.Split(val.x[rank::world], val.y[rank::world]).to(device)

    method_name = "natural" if job["stage"] == "pretrain" else cfg.method.name
    method_module = METHODS[method_name]
    a = cfg.attack
    attack = make_attack(a.name, eps=a.eps, norm=a.norm, steps=a.steps, step_size=a.step_size,
                         random_start=a.random_start)
    params = params_of(cfg.method) if method_name == cfg.method.name else method_module.Params()
    objective = method_module.Objective(start_model(job, dataset), params, attack)
    if hasattr(objective, "teacher"):
        objective.teacher.to(device)
    module = objective.module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    val_attack = make_attack(cfg.eval.val_attack, eps=cfg.eval.eps, norm=cfg.eval.norm,
                             num_classes=dataset.num_classes, seed=cfg.eval.seed)

    per_worker_batch = max(1, t.batch_size // world)
    epoch_len = len(train_split) - len(train_split) % world  # equal shards, so DDP ranks stay in step
    steps_per_epoch = math.ceil(epoch_len // world / per_worker_batch)
    optimizer = torch.optim.SGD(objective.param_groups(t.weight_decay), lr=t.lr, momentum=t.momentum)
    total_steps = steps_per_epoch * t.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(t, step / total_steps))
    ema = EMA(module, t.ema_decay) if t.ema else None
    net = module
    if world > 1:
        net = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    # The attack runs on the bare module (DDP would wait for weight gradients the attack never makes);
    # compiled, it gets its own compiled wrapper, since its passes are most of the step's work.
    mode = compile_mode(t.compile, device, world)
    attacked = module
    if mode:
        # A trial process that Tune reuses compiles once per trial: without the reset the graphs of
        # earlier trials count towards dynamo's recompile limit, past which it silently runs eager.
        torch.compiler.reset()
        attacked = torch.compile(module, mode=mode)
        net = attacked if net is module else torch.compile(net, mode=mode)

    history, start_epoch = [], 0
    state = context.restore()
    if state is not None:
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema:
            ema.load_state_dict(state["ema"])
        history, start_epoch = state["history"], state["epoch"] + 1

    _test_out_of_memory(job)
    # The starting model's clean accuracy, to tell a first epoch that wrecks it (too high a learning rate)
    start_clean = None
    if job.get("start") and start_epoch == 0:
        start_clean = val_accuracy(module, val_shard, len(val), [None], cfg.eval.batch_size, bf16, world)[0]
    flops_per_image = forward_flops(objective.export(module), dataset.in_shape) * objective.passes(a.steps)
    peak = peak_flops(device, bf16) * world
    for epoch in range(start_epoch, t.epochs):
        started = time.perf_counter()
        # Seeds per (seed, epoch, rank): a run resumed from epoch k's checkpoint replays epoch k+1 exactly.
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
        torch.manual_seed(t.seed * 1_000_003 + epoch * 101 + rank)
        shard = order[:epoch_len][rank::world]
        sums = {}
        for batch, begin in enumerate(range(0, len(shard), per_worker_batch)):
            _fault_switch(job, rank, world, epoch, batch)
            index = shard[begin:begin + per_worker_batch]
            x = data.to_float(train_split.x[index].to(device, non_blocking=True))
            y = train_split.y[index].to(device, non_blocking=True)
            x = data.augment(x, cfg.data.crop_padding, cfg.data.flip)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            parts = train_step(objective, attacked, net, optimizer, x, y, bf16, compiled=mode is not None)
            scheduler.step()
            if ema:
                ema.update(module)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0) + value.detach().float() * len(y)
        train_seconds = time.perf_counter() - started
        losses = _mean_over_workers(sums, len(shard), world)
        if not math.isfinite(losses.get("loss", 0.0)):
            reason = (f"training diverged: the loss is {losses['loss']} in epoch {epoch + 1}; "
                      f"lower {job['stage']}.lr (now {t.lr})")
            if rank == 0:
                storage.write_bytes(diverged, reason.encode())
            raise Diverged(reason)

        evaluated = ema.module if ema else module
        clean_acc, robust_acc = val_accuracy(evaluated, val_shard, len(val), [None, val_attack],
                                             cfg.eval.batch_size, bf16, world)
        if epoch == 0 and start_clean is not None and clean_acc < start_clean / 2 and rank == 0:
            sys.stdout.write(f"[{job['label']}] warning: clean validation accuracy fell from {start_clean:.1%} to "
                             f"{clean_acc:.1%} in the first epoch; {job['stage']}.lr={t.lr:g} is likely too high "
                             f"for this model and data: lower it (e.g. {job['stage']}.lr={t.lr / 2.5:g})\n")
        wall = time.perf_counter() - started
        images_per_s = epoch_len / train_seconds
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **losses, "clean_acc": clean_acc,
               "robust_acc": robust_acc, "images_per_s": images_per_s,
               "mfu": images_per_s * flops_per_image / peak if peak else None,
               "train_seconds": train_seconds, "wall_seconds": wall,
               "gpu_seconds": wall * context.gpus * world, "cpu_seconds": wall * context.cpus * world,
               "finished_at": time.time(), "node": context.node}
        history.append(row)
        if rank == 0:
            _print_progress(job["label"], row, history, t.epochs)
            # before the report: if this process dies after writing, the epoch re-runs and replaces its row
            results.write_epochs(job["experiment_dir"], job["trial_id"], job["cfg"], history)
            if epoch + 1 == t.epochs:
                # before the last report too: Tune may stop a trial as soon as its last epoch is reported
                final = copy.deepcopy(objective.export(evaluated)).float().cpu().eval()  # the state is saved next
                final = final.to(memory_format=torch.contiguous_format)
                meta = {"method": method_name, "stage": job["stage"], "epochs": t.epochs, "history": history}
                ckpt.save(storage.join(job["run_dir"], "model.pt"), final,
                          ckpt.arch_of(final, cfg.model.name, dataset.in_shape), job["cfg"], meta)
        state = {"epoch": epoch, "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None, "history": history}
        context.report(row, state if rank == 0 else None)
    return history if rank == 0 else None


def val_accuracy(model: nn.Module, shard: data.Split, n: int, attacks: list, batch_size: int, bf16: bool,
                 world: int) -> list[float]:
    """Accuracy of `model` in eval mode on the validation split (this rank holds `shard` of its `n`
    examples) under each attack (None: clean), summed over the ranks."""
    model.eval()
    counts = torch.stack([correct_count(model, shard, attack, batch_size, bf16) for attack in attacks]).float()
    if world > 1:
        dist.all_reduce(counts)
    return (counts / n).tolist()


def _print_progress(label: str, row: dict, history: list, epochs: int):
    done = len(history)
    seconds = sum(r["wall_seconds"] for r in history[-3:]) / min(3, done)
    eta = time.strftime("%H:%M:%S", time.gmtime(seconds * (epochs - row["epoch"])))
    # sys.stdout.write, not print: Ray Train workers patch print to log each line twice
    sys.stdout.write(f"[{label}] epoch {row['epoch']}/{epochs}  loss {row.get('loss', float('nan')):.4f}  "
                     f"val clean {row['clean_acc']:.3f}  robust {row['robust_acc']:.3f}  "
                     f"{row['images_per_s']:.0f} img/s  eta {eta}\n")
    sys.stdout.flush()


def _mean_over_workers(sums: dict, count: int, world: int) -> dict:
    if not sums:
        return {}
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys])
    if world > 1:
        dist.all_reduce(totals)
    return {f"loss_{k}" if k != "loss" else "loss": v for k, v in zip(keys, (totals / (count * world)).tolist())}


def peak_flops(device: torch.device, bf16: bool) -> float:
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, (bf16_peak, tf32_peak) in PEAK_FLOPS.items():
        if key in name:
            return bf16_peak if bf16 else tf32_peak
    return 0.0

