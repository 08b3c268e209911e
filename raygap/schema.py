"""The typed configuration: its closed choices, the dataclasses that fix every key (type, default,
meaning) and the config's serialisation (plain dicts for Ray, digests for names and caches).

A leaf: it imports nothing of raygap's, so any module may use the types. Hydra composition and the
range checks are in raygap/config.py; each method's hyperparameters are a dataclass beside its loss in
raygap/methods/.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, SI, DictConfig, OmegaConf


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
Scheduler = choice("Scheduler", "asha pareto_asha fifo pbt")
Algorithm = choice("Algorithm", "auto tpe nsga2 random grid gp")
Init = choice("Init", "auto pretrained scratch")
Tracker = choice("Tracker", "mlflow")
Keep = choice("Keep", "best last")


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "./data"  # torchvision data sets and ImageFolder trees
    path: str = ""  # the .npz file for data=npz
    download: bool = False
    # carved from the training data; 0: none (a paper protocol trains on every training image, and the
    # per-epoch figures are then measured on training images, for monitoring only)
    val_fraction: float = 0.15
    test_fraction: float = 0.2  # carved only where the data set has no official test split
    train_n: int = 0  # keep a seeded random n of the training split (0: all), for runs sized for a CPU
    split_seed: int = 0
    mean: List[float] = field(default_factory=list)  # empty: computed on the training split
    std: List[float] = field(default_factory=list)
    crop_padding: int = 0  # random crop after zero padding, 0 = off
    flip: bool = False  # random horizontal flip
    eps: float = 8 / 255  # the customary L-inf budget for this data: default of attack.eps and eval.eps
    resident: Resident = Resident.auto  # where the whole data set is held: auto, device or host
    # a tree of image files (data=folder, data=imagenet) read from memory (false) or streamed through Ray
    # Data (true); auto streams when the decoded training images would take over a quarter of this
    # machine's memory, or when image_size asks for resizing (raygap/stream.py)
    stream: str = "auto"
    image_size: int = 0  # streamed: the side images are cropped to (train) and resized to (eval); 0: as stored
    decode_cpus: float = 0.5  # the CPUs one Ray Data decoding task reserves (they run beside the trainers)
    decoders: int = 1  # decoding tasks each training process keeps running at once (its CPUs: decode_cpus each)


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
    weight_decay: float = 5e-4  # AFD's official update applies it three times to all but D2 (methods/afd.py)
    # step (x lr_decay at each milestone), afd (the official AFD schedule), cosine, constant
    schedule: Schedule = Schedule.step
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
    format: ReportFormat = ReportFormat.raygap  # raygap (the JSON) or robustbench (also RobustBench's model_info)
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
    # only when enough trials at its rung dominate it (stopping.py); fifo: none; pbt: population-based
    # training, the searched keys changed during training (stopping.population_based_training)
    name: Scheduler = Scheduler.asha
    grace_period: int = 2  # epochs every trial runs before it may be stopped
    reduction_factor: int = 2
    perturbation_interval: int = 2  # pbt: epochs between two exploit-and-explore steps of the population


@dataclass
class TuneConfig:
    space: Dict[str, Distribution] = field(default_factory=dict)
    objectives: List[ObjectiveConfig] = field(default_factory=lambda: [ObjectiveConfig()])
    # tpe, nsga2, gp (Optuna's Gaussian-process sampler), random, or grid (every combination of the choices,
    # once); auto: GP for one objective (with a start-up sized to the search and ASHA, the strategy that reached
    # random search's best soonest on the replayed CIFAR-10 and digits grids: benchmarks/README.md), NSGA-II for
    # several
    algorithm: Algorithm = Algorithm.auto
    # random trials before TPE or GP model the results; null: a quarter of tune.num_samples, at least 2
    # (searcher.sized_startup; Optuna's own 10 is the whole of a search of 10 trials or fewer)
    startup_trials: Optional[int] = None
    # TPE models the searched keys jointly (true) or each alone (false); null: Optuna's default, which in
    # Optuna 5.1 is jointly for one objective and each alone for several (TPESampler._is_multivariate)
    multivariate: Optional[bool] = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0
    trial_resources: Dict[str, float] = field(default_factory=lambda: {"CPU": 0.1})  # each trial's driver
    max_failures: int = 0  # retries of a trial whose run raised, before it is recorded as failed
    optuna_storage: str = ""  # an Optuna RDB URL; empty: the journal optuna.journal in the experiment (raygap.study)
    # an earlier experiment (a name under storage, or its folder): its completed trials inform the searcher
    warm_start: str = ""
    # the first trial trains the config's own values of the searched keys (searcher.defaults_point)
    try_defaults: bool = True
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
    seeds: List[int] = field(default_factory=lambda: [0])  # a whole search per method and seed (tune.seed, train.seed)
    untuned: List[str] = field(default_factory=list)  # methods also trained once at their defaults, unsearched
    resamples: int = 10000  # paired bootstrap resamples of the test images (and of the seeds) per interval


@dataclass
class ProtocolConfig:
    """Set by a paper recipe (recipe/): the paper it reproduces and the model it pins."""

    recipe: str = ""  # e.g. afd_paper; empty: no paper protocol
    model: str = ""  # the paper's model; another model.name is refused unless this is set to it


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
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    storage: str = "./raygap_results"  # a local folder or a pyarrow URI (s3://, gs://)
    name: str = ""  # experiment name; empty: derived from the config, so a re-run finds its run again
    checkpoint: str = ""  # the checkpoint to evaluate
    pretrained: str = ""  # start fine-tuning from this checkpoint instead of the cached natural model
    init: Init = Init.auto  # the start of train: auto (the method's own: random weights for natural and pgd_at,
    # the natural pre-trained model for the others), pretrained, or scratch (the from-scratch recipes)


def digest(node: Any, length: int = 10) -> str:
    """A short stable hash of a config (node), the key of caches and default run names."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# The rule for a new config key: it goes here (dotted; a whole node with its defaults as a dict) with its
# default, and is left out of the digest while it holds it, so the same command keeps finding (and
# resuming) an experiment named, or a natural model cached, before the key existed (tests/test_written_before.py
# pins such names and keys).
LATER_KEYS = {"protocol": {"recipe": "", "model": ""}, "tune.startup_trials": None, "tune.multivariate": None,
              "tune.scheduler.perturbation_interval": 2, "data.stream": "auto", "data.image_size": 0,
              "data.decode_cpus": 0.5, "data.decoders": 1}


def without_later_keys(plain: dict) -> dict:
    """`plain` (a config, or part of one, as nested dicts) without the LATER_KEYS that hold their default."""
    for key, default in LATER_KEYS.items():
        *parents, last = key.split(".")
        node = plain
        for parent in parents:
            node = node.get(parent, {})
        if last in node and node[last] == default:
            del node[last]
    return plain


def name_digest(cfg: DictConfig) -> str:
    """`digest` of a whole config, the suffix of default run and experiment names."""
    return digest(without_later_keys(OmegaConf.to_container(cfg, resolve=True)))


def search_algorithm(cfg) -> str:
    """tune.algorithm with auto resolved: GP for one objective, NSGA-II for several."""
    t = cfg.tune
    return str(t.algorithm) if t.algorithm != "auto" else ("gp" if len(t.objectives) == 1 else "nsga2")


def as_dict(cfg: DictConfig) -> dict:
    """The config as plain Python values (closed choices as strings), to travel through Ray."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def from_dict(plain: dict) -> DictConfig:
    """Rebuild a config that was passed through Ray as a plain dict (it was validated before)."""
    return OmegaConf.create(plain)
