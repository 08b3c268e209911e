"""Typed configuration: Hydra composes `search_spaces/` with command-line overrides, then `validate` checks it.

Types and the set of keys come from the dataclasses below (an unknown key or a value of the wrong type
is refused by OmegaConf); `validate` checks the ranges. Both run before any Ray process starts.
Each method's hyperparameters are a dataclass next to its loss in `raygap/methods/`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, SI, DictConfig, OmegaConf

from raygap import storage
from raygap.errors import UserError


def choice(name: str, options: str) -> type[StrEnum]:
    """A closed choice: a config key of this type takes one of `options` (space-separated); OmegaConf
    refuses anything else, and the error names the options. A member compares equal to its string."""
    return StrEnum(name, options, module=__name__)


Resident = choice("Resident", "auto device host")
Norm = choice("Norm", "linf l2")
TrainingAttack = choice("TrainingAttack", "pgd fgsm cw")
Schedule = choice("Schedule", "step afd cosine constant")
Backend = choice("Backend", "auto nccl gloo")
Precision = choice("Precision", "auto bf16 fp32")
ReportFormat = choice("ReportFormat", "raygap robustbench")
DistributionType = choice("DistributionType", "uniform loguniform int choice")
# kept_*: the validation figures of the epoch a trial exports (train.keep), so far; the others: this epoch's
SearchMetric = choice("SearchMetric", "kept_robust_acc kept_clean_acc robust_acc clean_acc loss")
Mode = choice("Mode", "max min")
Scheduler = choice("Scheduler", "asha pareto_asha fifo")
Algorithm = choice("Algorithm", "auto tpe nsga2 random grid")
Init = choice("Init", "auto pretrained scratch")
Tracker = choice("Tracker", "mlflow")
Keep = choice("Keep", "best last")


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "./data"  # torchvision data sets and ImageFolder trees
    path: str = ""  # the .npz file for data=npz
    download: bool = False
    val_fraction: float = 0.15  # carved from the training data
    test_fraction: float = 0.2  # carved only where the data set has no official test split
    train_n: int = 0  # keep a seeded random n of the training split (0: all), for runs sized for a CPU
    split_seed: int = 0
    mean: List[float] = field(default_factory=list)  # empty: computed on the training split
    std: List[float] = field(default_factory=list)
    crop_padding: int = 0  # random crop after zero padding, 0 = off
    flip: bool = False  # random horizontal flip
    eps: float = 8 / 255  # the customary L-inf budget for this data: default of attack.eps and eval.eps
    resident: Resident = Resident.auto  # where the whole data set is held: auto, device or host


@dataclass
class ModelConfig:
    name: str = MISSING


@dataclass
class AttackConfig:
    """The training attack; validation and evaluation attacks are set under `eval`."""

    name: TrainingAttack = TrainingAttack.pgd
    eps: float = SI("${data.eps}")
    steps: int = 10
    step_size: Optional[float] = None  # None: 2.5 eps / steps (FGSM: 1.25 eps)
    norm: Norm = Norm.linf
    random_start: bool = True


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128  # global batch: each of N workers takes batch_size / N
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 5e-4  # AFD's official update applies it twice to all but D2 (methods/afd.py)
    schedule: Schedule = Schedule.step  # step (x lr_decay at each milestone), afd (the official AFD schedule), cosine, constant
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    lr_decay: float = 0.1
    ema: bool = True  # evaluate and export the weight EMA (decay min(ema_decay, (t+1)/(t+10)))
    ema_decay: float = 0.999
    # the epoch exported: best (the highest robust validation accuracy, as Rice et al. 2020 stop early) or last
    keep: Keep = Keep.best
    seed: int = 0
    workers: int = 0  # 0: in this process; N >= 1: a Ray Train run with N workers
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    backend: Backend = Backend.auto  # DDP backend: auto (nccl with GPUs, else gloo), nccl or gloo
    precision: Precision = Precision.auto  # auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32
    channels_last: bool = True  # on CUDA only
    compile: str = "auto"  # auto (on CUDA: torch.compile with CUDA graphs; eager on CPU), true or false
    max_failures: int = 0


@dataclass
class ModelInfoConfig:
    """RobustBench model_info fields that raygap cannot know (eval.format=robustbench); empty ones are left
    in the file for you to fill in."""

    link: str = ""  # the paper's URL
    name: str = ""  # the paper's title
    authors: str = ""
    venue: str = ""  # e.g. "AAAI 2025"
    additional_data: bool = False  # raygap trains on the data set alone
    reported: str = ""  # the paper's robust accuracy in percent; empty: the AutoAttack accuracy measured here
    footnote: str = ""  # written only when given
    unreliable: bool = False


@dataclass
class EvalConfig:
    attacks: List[str] = field(default_factory=lambda: ["clean", "fgsm", "pgd20", "cw", "autoattack"])
    n: int = 1000  # the first n test examples; 0 = all
    out: str = ""  # JSON path; empty: eval.json beside the checkpoint
    format: ReportFormat = ReportFormat.raygap  # raygap (the JSON) or robustbench (also RobustBench's model_info beside it)
    info: ModelInfoConfig = field(default_factory=ModelInfoConfig)
    eps: float = SI("${data.eps}")
    norm: Norm = Norm.linf
    batch_size: int = 500
    val_attack: str = "pgd10"  # the per-epoch robust metric on the validation split
    val_n: int = 0  # validation examples per epoch; 0 = all
    seed: int = 0


@dataclass
class Distribution:
    """One searched key: uniform / loguniform (low, high), int (low, high, log) or choice (values)."""

    type: DistributionType = MISSING
    low: Optional[float] = None
    high: Optional[float] = None
    values: Optional[List[Any]] = None
    log: bool = False
    when: Optional[Dict[str, List[Any]]] = None  # sampled only when these searched keys take these values


@dataclass
class ObjectiveConfig:
    metric: SearchMetric = SearchMetric.kept_robust_acc  # a per-epoch validation metric
    mode: Mode = Mode.max


@dataclass
class SchedulerConfig:
    # asha: early stopping on the first objective, per epoch; pareto_asha: on all objectives, a trial stopped
    # only when enough trials at its rung dominate it (stopping.py); fifo: none
    name: Scheduler = Scheduler.asha
    grace_period: int = 2  # epochs every trial runs before it may be stopped
    reduction_factor: int = 2


@dataclass
class TuneConfig:
    space: Dict[str, Distribution] = field(default_factory=dict)
    objectives: List[ObjectiveConfig] = field(default_factory=lambda: [ObjectiveConfig()])
    # tpe, nsga2, random, or grid (every combination of the choices, once); auto: TPE for one objective,
    # NSGA-II for several
    algorithm: Algorithm = Algorithm.auto
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0
    trial_resources: Dict[str, float] = field(default_factory=lambda: {"CPU": 0.1})  # each trial's driver
    max_failures: int = 0  # retries of a trial whose run raised, before it is recorded as failed
    optuna_storage: str = ""  # an Optuna RDB URL; empty: the journal optuna.journal in the experiment folder (raygap.study)
    warm_start: str = ""  # an earlier experiment (name under storage, or its folder): its completed trials inform the searcher
    try_defaults: bool = True  # the first trial trains the config's own values of the searched keys (searcher.defaults_point)
    trackers: List[Tracker] = field(default_factory=list)  # [mlflow]: each trial an MLflow run too (raygap.trackers)
    mlflow_uri: str = ""  # MLflow's tracking URI; empty: MLflow's own (MLFLOW_TRACKING_URI, else ./mlflow.db)


@dataclass
class FinalEvalConfig:
    """The strong evaluation of the best trials on the test split, once the search is over."""

    attacks: List[str] = field(default_factory=lambda: ["clean", "pgd50", "autoattack"])
    n: int = 1000  # test examples; 0 = all
    top_k: int = 1  # finalists: the best k trials by the first objective


@dataclass
class CompareConfig:
    """`python -m raygap.compare`: defences searched at one budget, their finalists attacked on the same test images."""

    methods: List[str] = field(default_factory=list)  # empty: every method the space's `method` choice offers
    seeds: List[int] = field(default_factory=lambda: [0])  # one whole search per method and seed (tune.seed, train.seed)
    untuned: List[str] = field(default_factory=list)  # methods also trained once at their defaults, unsearched
    resamples: int = 10000  # paired bootstrap resamples of the test images (and of the seeds) per interval


@dataclass
class RaygapConfig:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    method: Any = MISSING
    attack: AttackConfig = field(default_factory=AttackConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=30, lr=0.05, schedule=Schedule.cosine, ema=False, keep=Keep.last))
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    final_eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    storage: str = "./raygap_results"  # a local folder or a pyarrow URI (s3://, gs://)
    name: str = ""  # experiment name; empty: derived from the config, so a re-run finds its run again
    checkpoint: str = ""  # the checkpoint to evaluate
    pretrained: str = ""  # start fine-tuning from this checkpoint instead of the cached natural model
    init: Init = Init.auto  # the start of train: auto (the method's own: random weights for natural and pgd_at,
    # the natural pre-trained model for the others), pretrained, or scratch (the from-scratch recipes)


def config_dir() -> Path:
    """search_spaces/ beside the package (a checkout or an editable install) or inside it (a wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "search_spaces", here.parent / "search_spaces"):
        if candidate.is_dir():
            return candidate
    raise UserError(f"cannot find the search_spaces/ config folder next to {here}")


def method_defaults(data_name: str, method_name: str) -> dict:
    """A method's defaults for one data set, `search_spaces/data_method/<data>_<method>.yaml` (Hydra
    composes it into `method`; a trial whose method is searched gets it here), {} when there is none."""
    path = config_dir() / "data_method" / f"{data_name}_{method_name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)).get("method", {}) if path.is_file() else {}


def _register():
    from hydra.core.config_store import ConfigStore

    from raygap.methods import METHODS

    store = ConfigStore.instance()
    schema = OmegaConf.structured(RaygapConfig)
    # Every key is fixed except in the two dictionaries, where a command line may add entries:
    # tune.space={train.lr:{type:loguniform,low:0.001,high:0.1}}, tune.trial_resources={CPU:0.1,head:1}
    for node in (schema.tune.space, schema.tune.trial_resources):
        OmegaConf.set_struct(node, False)
    store.store(name="raygap_schema", node=schema)
    for name, method in METHODS.items():
        store.store(group="method", name=name, node=method.Params)


def _one_line(err: Exception) -> str:
    """Hydra and OmegaConf errors span several lines; keep what says what is wrong and where."""
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException) and err.options:
        group, _, option = str(err.missing_cfg_file).partition("/")
        return f"unknown {group} '{option}'; choose one of: {', '.join(err.options)}"
    cause = err.__cause__ or err
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), "")
    if " not in " in lines[0] and key:
        return f"unknown config key '{key}' (print the config's keys with --cfg)"
    if (closed := CLOSED_CHOICE.fullmatch(lines[0])) and key:  # a value outside an enum's options
        return f"{key} '{closed['value']}' is unknown; choose one of: {closed['options']}"
    return f"{key}: {lines[0]}" if key else lines[0]


CLOSED_CHOICE = re.compile(r"Invalid value '(?P<value>.*)', expected one of \[(?P<options>.*)\]")


def load(overrides: list[str], config_name: str = "raygap", search: bool = True) -> DictConfig:
    """Compose a config with Hydra overrides, resolve and validate it.

    `config_name` names a file of search_spaces/ (without .yaml), or is the path of a YAML file of
    your own, which may build on the shipped ones (`defaults: [afd, _self_]`). `search=False` takes a
    search space's settings for single runs: its `tune.space` is dropped (another method may lack its keys).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    directory = config_dir()
    if config_name.endswith((".yaml", ".yml")):
        path = Path(config_name).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"search space file {path} does not exist")
        # the user's folder is Hydra's main config folder; the shipped configs stay findable
        directory, config_name = path.parent, path.stem
        overrides = [*overrides, f"hydra.searchpath=[file://{config_dir()}]"]
    elif not (directory / f"{config_name}.yaml").is_file():
        names = sorted(p.stem for p in directory.glob("*.yaml") if p.stem != "raygap")  # raygap.yaml: the base
        raise UserError(f"unknown search space '{config_name}'; choose one of: {', '.join(names)}, "
                        f"or give the path of a YAML file")
    for override in overrides:
        if override.startswith(("+", "~")):
            raise UserError(f"bad config: '{override}' adds or deletes a key; raygap's keys are fixed, "
                            f"set an existing one with key=value (print them with --cfg)")
    _register()
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
        if not search:
            cfg.tune.space = {}
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise UserError(f"bad config: {_one_line(err)}") from None
    except RecursionError:  # Hydra follows a defaults list that includes its own file without end
        raise UserError(f"search space '{config_name}' includes itself through its defaults: a file named like "
                        f"the search space it builds on hides it; rename the file") from None
    validate(cfg)
    # Ray runs trials and workers in other folders: every local path becomes absolute here.
    cfg.storage = storage.absolute(cfg.storage)
    for key in ("checkpoint", "pretrained", "data.root", "data.path", "eval.out"):
        value = OmegaConf.select(cfg, key)
        if value:
            OmegaConf.update(cfg, key, storage.absolute(value))
    return cfg


def _require(ok: bool, key: str, why: str):
    if not ok:
        raise UserError(f"bad config: {key} {why}")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate(cfg: DictConfig) -> None:
    """Range checks that types cannot express; raises UserError with one line naming the key."""
    from raygap.attacks import make_attack
    from raygap.data import DATASETS
    from raygap.methods import METHODS, params_of
    from raygap.models import BACKBONES

    _require(cfg.data.name != "npz" or bool(cfg.data.path), "data.path", "is required for data=npz: the .npz file")
    _require(cfg.data.name != "folder" or bool(cfg.data.root), "data.root",
             "is required for an ImageFolder tree: data.root=<dir holding <class>/ or train/<class>/ folders>")
    _require(cfg.data.name in DATASETS, "data.name", f"'{cfg.data.name}' is unknown; choose one of: {', '.join(DATASETS)}")
    _require(cfg.model.name in BACKBONES, "model.name", f"'{cfg.model.name}' is unknown; choose one of: {', '.join(BACKBONES)}")
    for key in ("val_fraction", "test_fraction"):
        _require(0 < cfg.data[key] < 1, f"data.{key}", f"must lie strictly between 0 and 1, got {cfg.data[key]}")
    _require(cfg.data.crop_padding >= 0, "data.crop_padding", "must be >= 0")
    _require(cfg.data.train_n >= 0, "data.train_n", f"must be >= 0 (0: the whole training split), got {cfg.data.train_n}")
    _require(len(cfg.data.mean) == len(cfg.data.std), "data.mean", "and data.std must have the same length")
    _require(all(s > 0 for s in cfg.data.std), "data.std", "must be positive")
    for node in ("attack", "eval"):
        eps, norm = cfg[node].eps, cfg[node].norm
        _require(math.isfinite(eps) and eps >= 0, f"{node}.eps", f"must be >= 0, got {eps}")
        _require(norm != "linf" or eps <= 1, f"{node}.eps", f"= {eps} covers the whole [0, 1] pixel range; "
                 f"an L-inf budget is a fraction such as 8/255 = 0.0314")
    _require(cfg.attack.steps >= 1, "attack.steps", f"must be >= 1, got {cfg.attack.steps}")
    _require(cfg.attack.step_size is None or cfg.attack.step_size > 0, "attack.step_size", "must be > 0 (or null for 2.5 eps / steps)")
    for node in ("train", "pretrain"):
        t = cfg[node]
        _require(t.epochs >= 1, f"{node}.epochs", f"must be >= 1, got {t.epochs}")
        _require(t.batch_size >= 1, f"{node}.batch_size", f"must be >= 1, got {t.batch_size}")
        _require(t.lr > 0 and math.isfinite(t.lr), f"{node}.lr", f"must be > 0, got {t.lr}")
        _require(0 <= t.momentum < 1, f"{node}.momentum", "must lie in [0, 1)")
        _require(t.weight_decay >= 0, f"{node}.weight_decay", "must be >= 0")
        _require(all(0 < m < 1 for m in t.milestones), f"{node}.milestones", "are fractions of training in (0, 1)")
        _require(0 < t.lr_decay <= 1, f"{node}.lr_decay", "must lie in (0, 1]")
        _require(0 < t.ema_decay < 1, f"{node}.ema_decay", "must lie in (0, 1)")
        _require(t.workers >= 0, f"{node}.workers", "must be >= 0 (0 trains in this process)")
        _require(t.gpus_per_worker >= 0 and t.cpus_per_worker > 0, f"{node}.gpus_per_worker",
                 "must be >= 0 and cpus_per_worker > 0")
        _require(str(t.compile).lower() in ("auto", "true", "false"), f"{node}.compile", "must be auto, true or false")
        _require(t.max_failures >= -1, f"{node}.max_failures", "must be >= 0 (or -1 for unlimited retries)")
        _require(t.workers <= 1 or t.batch_size >= t.workers, f"{node}.batch_size",
                 f"({t.batch_size}) must be at least the number of workers ({t.workers})")
    for name in list(cfg.eval.attacks) + [cfg.eval.val_attack]:
        make_attack(name, eps=cfg.eval.eps, norm=cfg.eval.norm)
    _require(cfg.eval.format != "robustbench" or "autoattack" in cfg.eval.attacks, "eval.format",
             "=robustbench reports the standard AutoAttack: add autoattack to eval.attacks")
    _require(not cfg.eval.info.reported or _is_percent(cfg.eval.info.reported), "eval.info.reported",
             f"must be a percentage such as 47.40, got '{cfg.eval.info.reported}'")
    _require(cfg.eval.n >= 0 and cfg.eval.val_n >= 0, "eval.n", "and eval.val_n must be >= 0 (0 = all)")
    _require(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _require(cfg.method.name in METHODS, "method", f"'{cfg.method.name}' is unknown; choose one of: {', '.join(METHODS)}")
    for key, why in METHODS[cfg.method.name].check(params_of(cfg.method)):
        _require(False, f"method.{key}", why)
    _validate_tune(cfg)
    _require(cfg.name == "" or bool(NAME.fullmatch(cfg.name)), "name",
             f"'{cfg.name}' must be letters, digits, '.', '_' or '-' (no '/' or '..'), so it stays inside storage")
    _require(cfg.name not in (".", ".."), "name", "cannot be '.' or '..'")
    _require(bool(cfg.storage), "storage", "must not be empty")


def _is_percent(text: str) -> bool:
    try:
        return 0 <= float(text) <= 100
    except ValueError:
        return False


def _validate_tune(cfg: DictConfig) -> None:
    from raygap.attacks import make_attack
    from raygap.methods import METHODS

    t = cfg.tune
    _require(len(t.objectives) >= 1, "tune.objectives", "needs at least one objective")
    _require(t.algorithm != "tpe" or len(t.objectives) == 1, "tune.algorithm", "tpe takes one objective; use nsga2")
    _require(t.scheduler.name != "pareto_asha" or len(t.objectives) > 1, "tune.scheduler.name=pareto_asha",
             "stops trials on several objectives, and tune.objectives has one: use asha")
    _require(t.scheduler.grace_period >= 1 and t.scheduler.reduction_factor >= 2, "tune.scheduler",
             "needs grace_period >= 1 and reduction_factor >= 2")
    _require(t.num_samples >= 1 and t.max_concurrent >= 1, "tune.num_samples", "and tune.max_concurrent must be >= 1")
    _require(t.max_failures >= 0, "tune.max_failures", "must be >= 0")
    _require(all(v >= 0 for v in t.trial_resources.values()), "tune.trial_resources", "must be >= 0")
    _require(cfg.train.workers == 0 or any(v > 0 for v in t.trial_resources.values()), "tune.trial_resources",
             "must ask for some resource for each trial's driver of a Ray Train run, such as {CPU:0.1}")
    _require(cfg.final_eval.n >= 0 and cfg.final_eval.top_k >= 0, "final_eval.n", "and final_eval.top_k must be >= 0")
    for name in cfg.final_eval.attacks:
        make_attack(name, eps=cfg.eval.eps, norm=cfg.eval.norm)
    for key, d in t.space.items():
        where = f"tune.space.{key}"
        if d.type == "choice":
            _require(bool(d["values"]), where, "is a choice with no values")
            candidates = list(d["values"])
        else:
            _require(d.low is not None and d.high is not None, where, f"needs low and high for type {d.type}")
            _require(d.low < d.high, where, f"is empty or inverted: low {d.low} must be below high {d.high}")
            _require(d.type != "loguniform" and not d.log or d.low > 0, where, "is on a log scale and needs low > 0")
            candidates = [int(d.low), int(d.high)] if d.type == "int" else [d.low, d.high]
        for other in (d.when or {}):
            _require(other in t.space, where, f"depends on '{other}', which is not searched")
        if key == "method":
            for value in candidates:
                _require(value in METHODS, where, f"offers method '{value}'; methods: {', '.join(METHODS)}")
            continue
        methods = (d.when or {}).get("method") or (t.space["method"]["values"] if "method" in t.space else [cfg.method.name])
        plain = OmegaConf.to_container(cfg)
        plain.pop("method")
        for method in methods:
            # the config this trial would have, typed by the schema, so that a value of the wrong type fails
            trial = OmegaConf.merge(OmegaConf.structured(RaygapConfig(method=METHODS[method].Params())), plain)
            _require(OmegaConf.select(trial, key, default=_ABSENT) is not _ABSENT, where,
                     f"names a key that does not exist{'' if method == cfg.method.name else f' for method {method}'}"
                     " (print the keys with --cfg)")
            for value in candidates:
                try:
                    OmegaConf.update(trial, key, value)
                except Exception as err:
                    _require(False, where, f"value {value!r} does not fit the key: {str(err).splitlines()[0]}")
    if t.algorithm == "grid":
        _validate_grid(t)


def _validate_grid(t) -> None:
    for key, d in t.space.items():
        _require(d.type == "choice" and not d.when, f"tune.space.{key}",
                 "must be a choice without `when` for tune.algorithm=grid (a grid is every combination of values)")
    size = math.prod(len(d["values"]) for d in t.space.values())
    _require(t.num_samples == size, "tune.num_samples", f"must be {size}, the number of combinations of the grid, "
             f"for tune.algorithm=grid (got {t.num_samples})")


_ABSENT = object()


def digest(node: Any, length: int = 10) -> str:
    """A short stable hash of a config (node), the key of caches and default run names."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def as_dict(cfg: DictConfig) -> dict:
    """The config as plain Python values (closed choices as strings), to travel through Ray."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def from_dict(plain: dict) -> DictConfig:
    """Rebuild a config that was passed through Ray as a plain dict (it was validated before)."""
    return OmegaConf.create(plain)


def trial_config(base: dict, params: dict):
    """The config of one trial: the base config with the searched values set."""
    from raygap.methods import METHODS

    cfg = OmegaConf.create(base)
    if "method" in params:
        cfg.method = OmegaConf.merge(OmegaConf.structured(METHODS[params["method"]].Params),
                                     method_defaults(cfg.data.name, params["method"]))
    for key, value in params.items():
        if key != "method":
            OmegaConf.update(cfg, key, value)
    return cfg
