"""The per-worker training loop, shared by natural pre-training and every defence.

`train_loop(job, context)` is a plain function: it runs in this process (train.workers=0) or, unchanged,
on every worker of a Ray Train run (runner.py decides which, and gives it its context). It builds the
method's objective, then for each epoch: for each batch (data.Batches), makes adversarial examples on
the module in eval mode and steps SGD with the configured schedule and a weight EMA; validates clean
and robust accuracy (the same images and attack seed every epoch and every run, so figures are paired);
records the epoch (progress line, epochs table) and reports it with a checkpoint of the whole training
state. Rank 0 exports the deployable classifier at the end: the weights of the epoch `keep` names.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn

from raygap import checkpoint as ckpt
from raygap import data, faults, layout, results, storage, stream
from raygap.attacks import autocast, correct_count, make_attack
from raygap.errors import Diverged
from raygap.methods import METHODS, params_of
from raygap.methods.base import Objective
from raygap.models import build_model, forward_flops
from raygap.progress import eta
from raygap.schema import from_dict

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


def start_model(job: Job, cfg, dataset: data.Dataset) -> nn.Module:
    if job.start:
        return ckpt.load_start(job.start, cfg.model.name, dataset.in_shape, dataset.num_classes, dataset.mean,
                               dataset.std)
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


def train_step(objective, module: nn.Module, net: nn.Module, optimizer, x, y, bf16: bool,
               compiled: bool = False) -> dict:
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


@dataclass
class Job:
    """One training run, as the loop needs it: plain data, so that it travels to Ray Train workers."""

    cfg: dict  # the whole config, plain
    method: str  # the objective trained: the config's method, or "natural" for pre-training
    stage: str  # the config node of the training settings: "train" or "pretrain"
    start: str | None  # the checkpoint to start from; None: random weights
    run_dir: str  # where the state and the exported model go
    label: str = ""  # the name in progress lines (default: the method)
    experiment_dir: str = ""  # where the epochs table gets this run's rows (default: run_dir)
    trial_id: str = ""  # this run's id in that table (default: run_dir's last part)

    def __post_init__(self):
        self.label = self.label or self.method
        self.experiment_dir = self.experiment_dir or self.run_dir
        self.trial_id = self.trial_id or self.run_dir.rsplit("/", 1)[-1]

    @property
    def training(self):
        """The training settings (a TrainConfig node)."""
        return OmegaConf.create(self.cfg[self.stage])

    @property
    def params(self):
        """The method's Params: the config's method node where it names this method, else the method's
        defaults (the natural model is pre-trained under the config of whichever method needs it)."""
        node = OmegaConf.create(self.cfg["method"])
        return params_of(node) if node.name == self.method else METHODS[self.method].Params()

    def as_plain(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Parts:
    """What a run trains with, built once: the objective and its module under its three uses."""

    objective: Objective
    module: nn.Module  # the trained module
    attacked: nn.Module  # what the training attack runs on: the module, or its compiled wrapper
    net: nn.Module  # what the loss runs on: the module, maybe wrapped in DDP and compiled
    compiled: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None

    def state(self) -> dict:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema else None}

    def load(self, state: dict, keep_settings: bool = False):
        """Continue from `state`. keep_settings: only the state (weights, momentum buffers, steps taken, EMA)
        is taken; the optimiser's settings (learning rate, weight decay, momentum) stay this run's, on the
        schedule at the step reached: PBT continues a trial from another's state under its own config."""
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        if keep_settings:
            for group, mine in zip(self.optimizer.param_groups, settings):
                group.update(mine)
            self.scheduler.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
            for group, base, rule in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                         self.scheduler.lr_lambdas):
                group["lr"] = base * rule(self.scheduler.last_epoch)

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are validated and exported: the EMA's when there is one."""
        return self.ema.module if self.ema else self.module


def train_loop(job: Job, context) -> list | None:
    """Train `job` in `context` (a runner context: rank, device, restore and report). Returns the
    per-epoch metrics (a list of rows) on rank 0, None on the other ranks."""
    refuse_if_diverged_before(job)
    cfg = from_dict(job.cfg)
    t, rank, world, device = cfg[job.stage], context.rank, context.world, context.device
    bf16 = device.type == "cuda" and t.precision in ("auto", "bf16")
    torch.manual_seed(t.seed)
    dataset = stream.load_dataset(cfg.data)
    batches = stream.batches(dataset.train, cfg.data, t, rank, world, device, context.decode_group)
    val = validation(cfg, dataset, rank, world, device)
    parts = build(job, cfg, dataset, context, steps=batches.steps * t.epochs)
    history, configs, start_epoch, kept_weights, parent = [], [], 0, None, None
    if (state := context.restore()) is not None:
        parent = state.get("parent")  # PBT: this trial goes on from another trial's state, under its own config
        parts.load(state, keep_settings=parent is not None)
        history, start_epoch, kept_weights = state["history"], state["epoch"] + 1, state.get("kept_weights")
        configs = state.get("configs") or [job.cfg] * len(history)  # a state saved before configs were kept
    faults.at_start(job)
    # The starting model's clean accuracy, to tell a first epoch that wrecks it (too high a learning rate)
    start_clean = val.accuracy(parts.module, [None], bf16)[0] if job.start and start_epoch == 0 else None
    flops_per_image = forward_flops(parts.objective.export(parts.module), dataset.in_shape) * \
        parts.objective.passes(cfg.attack.steps)
    peak = peak_flops(device, bf16) * world
    for epoch in range(start_epoch, t.epochs):
        started = time.perf_counter()
        losses, skipped = train_epoch(job, parts, batches, epoch, rank, world, bf16)
        train_seconds = time.perf_counter() - started
        refuse_if_diverging(job, t.lr, losses, epoch, rank)
        clean_acc, robust_acc = val.accuracy(parts.evaluated, [None, val.attack], bf16)
        if epoch == 0 and start_clean is not None and clean_acc < start_clean / 2 and rank == 0:
            warn_lr_too_high(job, t.lr, start_clean, clean_acc)
        wall, speed = time.perf_counter() - started, batches.epoch_len / train_seconds
        kept = kept_row(history + [{"epoch": epoch + 1, "clean_acc": clean_acc, "robust_acc": robust_acc}], t.keep)
        history.append(results.EpochRow(
            epoch=epoch + 1, kept_epoch=kept["epoch"], lr=parts.optimizer.param_groups[0]["lr"],
            loss=losses.pop("loss", math.nan), clean_acc=clean_acc, robust_acc=robust_acc,
            clean_se=val.standard_error(clean_acc), robust_se=val.standard_error(robust_acc),
            kept_clean_acc=kept["clean_acc"], kept_robust_acc=kept["robust_acc"], images_per_s=speed,
            mfu=speed * flops_per_image / peak if peak else None, train_seconds=train_seconds, wall_seconds=wall,
            gpu_seconds=wall * context.gpus * world, cpu_seconds=wall * context.cpus * world,
            finished_at=time.time(), losses=losses, node=context.node,
            parent_epoch=parent and parent["epoch"], parent_trial=parent and parent["trial"],
            skipped_images=skipped).as_row())
        configs.append(job.cfg)
        parent = None
        if rank == 0 and t.keep == "best" and kept["epoch"] == epoch + 1:  # a copy: the live weights train on
            kept_weights = {k: v.detach().to("cpu", copy=True) for k, v in parts.evaluated.state_dict().items()}
        if rank == 0:
            record(job, history, configs, t.epochs)
            if epoch + 1 == t.epochs:  # before the last report: Tune may stop a trial as soon as it is reported
                export(job, cfg, dataset, parts, history, kept_weights)
        state = {"epoch": epoch, **parts.state(), "history": history, "configs": configs, "kept_weights": kept_weights}
        context.report(history[-1], state if rank == 0 else None)
    return history if rank == 0 else None


def train_epoch(job: Job, parts: Parts, batches: data.Batches, epoch: int, rank: int, world: int,
                bf16: bool) -> tuple[dict, int]:
    """One epoch of steps; returns the mean of each loss part over every worker's images, and how many
    images every worker together skipped as damaged."""
    torch.manual_seed(job.training.seed * 1_000_003 + epoch * 101 + rank)  # per (seed, epoch, rank): resumes replay
    sums = {}
    for batch, (x, y) in enumerate(batches.epoch(epoch)):
        faults.each_batch(job, rank, world, epoch, batch)
        step_losses = train_step(parts.objective, parts.attacked, parts.net, parts.optimizer, x, y, bf16,
                                 parts.compiled)
        parts.scheduler.step()
        if parts.ema:
            parts.ema.update(parts.module)
        for key, value in step_losses.items():
            sums[key] = sums.get(key, 0) + value.detach().float() * len(y)
    sums["skipped"] = torch.tensor(float(batches.skipped), device=batches.device)
    totals = _sum_over_workers(sums, world)
    skipped = int(totals.pop("skipped"))
    return {key: value / (batches.epoch_len - skipped) for key, value in totals.items()}, skipped


def kept_row(history: list, keep) -> dict:
    """The epoch (a row of `history`) whose weights are exported if training ends now: the last, or with
    keep=best the highest robust validation accuracy (then clean accuracy; the earliest on a tie), as
    Rice et al. (ICML 2020) stop adversarial training early on a held-out split."""
    if keep == "last":
        return history[-1]
    return max(history, key=lambda r: (r["robust_acc"], r["clean_acc"], -r["epoch"]))


def refuse_if_diverged_before(job: Job):
    """A run that diverged once diverges again: its restarts (Ray Train's, Tune's, a re-run of the same
    command) end at once with the first reason instead of training up to the same NaN."""
    path = layout.diverged(job.run_dir)
    if storage.exists(path):
        raise Diverged(storage.read_bytes(path).decode())


def refuse_if_diverging(job: Job, lr: float, losses: dict, epoch: int, rank: int):
    """A loss that is no longer finite ends the run, and rank 0 records why for its restarts."""
    if math.isfinite(losses.get("loss", 0.0)):
        return
    reason = f"training diverged: the loss is {losses['loss']} in epoch {epoch + 1}; lower {job.stage}.lr (now {lr})"
    if rank == 0:
        storage.write_bytes(layout.diverged(job.run_dir), reason.encode())
    raise Diverged(reason)


def warn_lr_too_high(job: Job, lr: float, start_clean: float, clean_acc: float):
    sys.stdout.write(f"[{job.label}] warning: clean validation accuracy fell from {start_clean:.1%} to "
                     f"{clean_acc:.1%} in the first epoch; {job.stage}.lr={lr:g} may be too high for this "
                     f"model and data: try {job.stage}.lr={lr / 2.5:g}; if that falls as far, the method "
                     f"itself trades this much clean accuracy for robustness\n")


def build(job: Job, cfg, dataset: data.Dataset, context, steps: int) -> Parts:
    """The objective (on the start model), its optimiser, schedule and EMA, on the context's device."""
    t, device, world = cfg[job.stage], context.device, context.world
    a = cfg.attack
    attack = make_attack(a.name, eps=a.eps, norm=a.norm, steps=a.steps, step_size=a.step_size,
                         random_start=a.random_start)
    objective = METHODS[job.method](start_model(job, cfg, dataset), job.params, attack).to(device)
    module = objective.module
    if device.type == "cuda" and t.channels_last:
        module = module.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(objective.param_groups(t.weight_decay), lr=t.lr, momentum=t.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(t, step / steps))
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
    return Parts(objective, module, attacked, net, mode is not None, optimizer, scheduler, ema)


def record(job: Job, history: list, configs: list, epochs: int):
    """Rank 0's record of an epoch: the progress line and the epochs table (written before the epoch's
    report: if this process dies after writing, the epoch re-runs and replaces its row)."""
    _print_progress(job.label, history, epochs)
    results.write_epochs(job.experiment_dir, job.trial_id, configs, history)


def export(job: Job, cfg, dataset: data.Dataset, parts: Parts, history: list, kept_weights: dict | None):
    """The deployable classifier of the kept epoch (`kept_weights`, or the current weights when None), fp32
    on the CPU, to `<run_dir>/model.pt` (the training state is saved next)."""
    evaluated = parts.evaluated
    if kept_weights is not None and history[-1]["kept_epoch"] != history[-1]["epoch"]:
        evaluated = copy.deepcopy(evaluated)
        evaluated.load_state_dict(kept_weights)
    final = copy.deepcopy(parts.objective.export(evaluated)).float().cpu().eval()
    final = final.to(memory_format=torch.contiguous_format)
    meta = {"method": job.method, "stage": job.stage, "epochs": len(history), "kept_epoch": history[-1]["kept_epoch"],
            "history": history}
    ckpt.save(layout.model(job.run_dir), final, ckpt.arch_of(final, cfg.model.name, dataset.in_shape),
              job.cfg, meta)


@dataclass
class Validation:
    """This rank's share of the validation split (eval.val_n examples) and the fixed validation attack.

    Every epoch of every run attacks the same images from the same random start (eval.seed, on an RNG of
    its own, so training's random stream is untouched): two trials' figures differ by their models only.
    """

    shard: data.Split
    n: int
    attack: object
    batch_size: int
    world: int
    rank: int
    seed: int

    def accuracy(self, model: nn.Module, attacks: list, bf16: bool) -> list[float]:
        """Accuracy of `model` in eval mode under each attack (None: clean), summed over the ranks."""
        model.eval()
        device = self.shard.x.device
        counts = []
        for attack in attacks:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(self.seed + self.rank)  # each rank's shard its own start, the same every time
                counts.append(correct_count(model, self.shard, attack, self.batch_size, bf16))
        counts = torch.stack(counts).float()
        if self.world > 1:
            dist.all_reduce(counts)
        return (counts / self.n).tolist()

    def standard_error(self, accuracy: float) -> float:
        """The binomial standard error of an accuracy measured on these n examples."""
        return math.sqrt(accuracy * (1 - accuracy) / self.n)


def validation(cfg, dataset: data.Dataset, rank: int, world: int, device) -> Validation:
    val = stream.head(dataset.val, cfg.eval.val_n)
    attack = make_attack(cfg.eval.val_attack, eps=cfg.eval.eps, norm=cfg.eval.norm, num_classes=dataset.num_classes,
                         seed=cfg.eval.seed)
    return Validation(data.Split(val.x[rank::world], val.y[rank::world]).to(device), len(val), attack,
                      cfg.eval.batch_size, world, rank, cfg.eval.seed)


def _print_progress(label: str, history: list, epochs: int):
    row, done = history[-1], len(history)
    seconds = sum(r["wall_seconds"] for r in history[-3:]) / min(3, done)
    left = eta(seconds * (epochs - row["epoch"]))
    # sys.stdout.write, not print: Ray Train workers patch print to log each line twice
    kept = f" (kept: epoch {row['kept_epoch']})" if row["kept_epoch"] != row["epoch"] else ""
    sys.stdout.write(f"[{label}] epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  "
                     f"val clean {row['clean_acc']:.3f}  robust {row['robust_acc']:.3f} ± {row['robust_se']:.3f}"
                     f"{kept}  "
                     f"{row['images_per_s']:.0f} img/s  eta {left}\n")
    sys.stdout.flush()


def _sum_over_workers(sums: dict, world: int) -> dict:
    """{key: the sum over every worker} of per-worker sums (scalar tensors on one device)."""
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys])
    if world > 1:
        dist.all_reduce(totals)
    return dict(zip(keys, totals.tolist()))


def peak_flops(device: torch.device, bf16: bool) -> float:
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, (bf16_peak, tf32_peak) in PEAK_FLOPS.items():
        if key in name:
            return bf16_peak if bf16 else tf32_peak
    return 0.0

