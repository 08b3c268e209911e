"""The configuration as commands load it: Hydra composes `search_spaces/` with command-line overrides,
then `validate` checks it; and a trial's config, the base one with its searched values set.

Types and the set of keys come from the dataclasses of raygap/schema.py (an unknown key or a value of
the wrong type is refused by OmegaConf); `validate` checks the ranges. Both run before any Ray process
starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raygap import storage
from raygap.attacks import make_attack
from raygap.data import DATASETS, MEAN_REQUIRED, STREAMABLE
from raygap.errors import UserError
from raygap.methods import METHODS, params_of
from raygap.models import BACKBONES
from raygap.schema import RaygapConfig, search_algorithm


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
    return _data_method(f"{data_name}_{method_name}")


def _data_method(name: str) -> dict:
    """The method node of data_method/<name>.yaml, after the files its defaults list names (as Hydra reads it)."""
    path = config_dir() / "data_method" / f"{name}.yaml"
    if not path.is_file():
        return {}
    node = OmegaConf.to_container(OmegaConf.load(path))
    merged = {}
    for included in node.get("defaults", []):
        merged.update(_data_method(included))
    return {**merged, **node.get("method", {})}


def _register():
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


_ABSENT = object()
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate(cfg: DictConfig) -> None:
    """Range checks that types cannot express; raises UserError with one line naming the key."""
    _require(cfg.data.name != "npz" or bool(cfg.data.path), "data.path", "is required for data=npz: the .npz file")
    _require(cfg.data.name not in STREAMABLE or bool(cfg.data.root), "data.root",
             "is required for an ImageFolder tree: data.root=<dir holding <class>/ or train/<class>/ folders>")
    _require(cfg.data.name in DATASETS, "data.name",
             f"'{cfg.data.name}' is unknown; choose one of: {', '.join(DATASETS)}")
    _require(cfg.model.name in BACKBONES, "model.name",
             f"'{cfg.model.name}' is unknown; choose one of: {', '.join(BACKBONES)}")
    _require(0 < cfg.data.test_fraction < 1, "data.test_fraction",
             f"must lie strictly between 0 and 1, got {cfg.data.test_fraction}")
    _require(0 <= cfg.data.val_fraction < 1, "data.val_fraction",
             f"must lie in [0, 1) (0: no validation split), got {cfg.data.val_fraction}")
    no_val = cfg.data.val_fraction == 0
    _require(not no_val or not cfg.tune.space, "data.val_fraction=0", "leaves no validation split, and a search "
             "ranks its trials on one: set data.val_fraction=0.1")
    _require(not no_val or cfg.train.keep == "last", "train.keep=best", "chooses the epoch on validation, and "
             "data.val_fraction=0 leaves none: set train.keep=last (as the paper protocols do)")
    pinned = cfg.protocol.model
    _require(not pinned or cfg.model.name == pinned, f"model={cfg.model.name}", "departs from "
             f"recipe={cfg.protocol.recipe}, which trains the paper's model={pinned}: drop model=, or add "
             f"protocol.model={cfg.model.name} to train the recipe on it knowingly")
    _require(cfg.data.crop_padding >= 0, "data.crop_padding", "must be >= 0")
    stream = str(cfg.data.stream).lower()
    _require(stream in ("auto", "true", "false"), "data.stream", f"must be auto, true or false, got {stream}")
    _require(stream != "true" or cfg.data.name in STREAMABLE, "data.stream=true", f"streams a tree of image "
             f"files; data={cfg.data.name} is read whole: use data=folder or data=imagenet, or data.stream=false")
    _require(stream != "false" or cfg.data.name != "imagenet", "data.stream=false", "cannot hold ImageNet in "
             "memory (its transforms crop the stored images): keep data.stream=auto or true")
    _require(cfg.data.image_size >= 0, "data.image_size", f"must be >= 0 (0: as stored), got {cfg.data.image_size}")
    _require(cfg.data.decode_cpus > 0, "data.decode_cpus", f"must be > 0, got {cfg.data.decode_cpus}")
    _require(cfg.data.decoders >= 1, "data.decoders", f"must be >= 1, got {cfg.data.decoders}")
    _require(not (cfg.data.image_size and cfg.data.crop_padding), "data.crop_padding", "pads the stored images, "
             "and data.image_size crops them as ImageNet is cropped (a random resized crop): set data.crop_padding=0")
    surely_streamed = cfg.data.name == "imagenet" or stream == "true" or (stream == "auto" and cfg.data.image_size)
    _require(not surely_streamed or bool(cfg.data.mean), "data.mean", MEAN_REQUIRED)
    _require(cfg.data.train_n >= 0, "data.train_n",
             f"must be >= 0 (0: the whole training split), got {cfg.data.train_n}")
    _require(len(cfg.data.mean) == len(cfg.data.std), "data.mean", "and data.std must have the same length")
    _require(all(s > 0 for s in cfg.data.std), "data.std", "must be positive")
    for node in ("attack", "eval"):
        eps, norm = cfg[node].eps, cfg[node].norm
        _require(math.isfinite(eps) and eps >= 0, f"{node}.eps", f"must be >= 0, got {eps}")
        _require(norm != "linf" or eps <= 1, f"{node}.eps", f"= {eps} covers the whole [0, 1] pixel range; "
                 f"an L-inf budget is a fraction such as 8/255 = 0.0314")
    _require(cfg.attack.steps >= 1, "attack.steps", f"must be >= 1, got {cfg.attack.steps}")
    _require(cfg.attack.step_size is None or cfg.attack.step_size > 0, "attack.step_size",
             "must be > 0 (or null for 2.5 eps / steps)")
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
    whole = 5000 if cfg.data.name == "imagenet" else 0  # RobustBench's ImageNet figures are on 5,000 val images
    _require(cfg.eval.format != "robustbench" or cfg.eval.n == whole, "eval.format=robustbench", f"reports "
             f"{'5,000 validation images' if whole else 'the whole test split'}, and eval.n={cfg.eval.n} evaluates "
             f"{'another number' if whole else 'part of it'}: set eval.n={whole}")
    _require(not cfg.eval.info.reported or _is_percent(cfg.eval.info.reported), "eval.info.reported",
             f"must be a percentage such as 47.40, got '{cfg.eval.info.reported}'")
    _require(cfg.eval.n >= 0 and cfg.eval.val_n >= 0, "eval.n", "and eval.val_n must be >= 0 (0 = all)")
    _require(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _require(cfg.method.name in METHODS, "method",
             f"'{cfg.method.name}' is unknown; choose one of: {', '.join(METHODS)}")
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
    t = cfg.tune
    _require(len(t.objectives) >= 1, "tune.objectives", "needs at least one objective")
    _require(t.algorithm != "tpe" or len(t.objectives) == 1, "tune.algorithm", "tpe takes one objective; use nsga2")
    _require(t.scheduler.name != "pareto_asha" or len(t.objectives) > 1, "tune.scheduler.name=pareto_asha",
             "stops trials on several objectives, and tune.objectives has one: use asha")
    _require(t.scheduler.grace_period >= 1 and t.scheduler.reduction_factor >= 2, "tune.scheduler",
             "needs grace_period >= 1 and reduction_factor >= 2")
    _require(t.num_samples >= 1 and t.max_concurrent >= 1, "tune.num_samples", "and tune.max_concurrent must be >= 1")
    _require(t.max_failures >= 0, "tune.max_failures", "must be >= 0")
    if t.startup_trials is not None:
        _require(search_algorithm(cfg) in ("tpe", "gp"), "tune.startup_trials",
                 f"sizes the random start of tune.algorithm=tpe or gp, and tune.algorithm={t.algorithm} has none")
        _require(0 <= t.startup_trials <= t.num_samples, f"tune.startup_trials={t.startup_trials}",
                 f"must lie in [0, tune.num_samples={t.num_samples}]: more would make every trial a random one "
                 "(use tune.algorithm=random for that)")
    _require(t.multivariate is None or search_algorithm(cfg) == "tpe", "tune.multivariate",
             f"is an option of tune.algorithm=tpe, not {search_algorithm(cfg)}")
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
        searched = t.space["method"]["values"] if "method" in t.space else [cfg.method.name]
        methods = (d.when or {}).get("method") or searched
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
    if t.scheduler.name == "pbt":
        _validate_population(cfg)


# What PBT may change during training: the optimiser's settings, the training attack's strength and the
# method's loss weights (float keys of a method's Params); not the model's shape (disentangler_size), the
# method, the data or the length of the run, which a trial's state is made for.
PERTURBABLE = ("train.lr", "train.weight_decay", "train.momentum", "attack.eps", "attack.step_size")


def perturbable(key: str) -> bool:
    if key in PERTURBABLE:
        return True
    name = key.removeprefix("method.")
    return key.startswith("method.") and any(
        f.name == name and f.type in (float, "float") for m in METHODS.values() for f in dataclasses.fields(m.Params))


def _validate_population(cfg: DictConfig) -> None:
    t = cfg.tune
    where = "tune.scheduler.name=pbt"
    for key, d in t.space.items():
        _require(perturbable(key), where, f"changes the searched keys during training, and tune.space.{key} cannot "
                 "change once training started; search it with tune.scheduler.name=asha, or fix it")
        _require(not d.when, where, f"perturbs every searched key alike: tune.space.{key} has a `when`")
    _require(len(t.objectives) == 1, where, "ranks the population on one objective, and tune.objectives has "
             f"{len(t.objectives)}")
    _require(t.algorithm in ("auto", "random"), where, f"samples its first population at random (Ray Tune runs it "
             f"without a searcher), so tune.algorithm={t.algorithm} would not be used: leave it at auto")
    _require(not t.warm_start, where, "has no searcher to warm-start: drop tune.warm_start")
    _require(cfg.train.workers == 0, where, "hands a trial's state to another through Tune, which raygap does "
             "for trials that train in their own process: use train.workers=0")
    _require(cfg.train.keep == "last", where, "replaces a trial's weights during training, so its best epoch may "
             "be of another lineage: use train.keep=last")
    _require(1 <= t.scheduler.perturbation_interval < cfg.train.epochs, "tune.scheduler.perturbation_interval",
             f"must lie in [1, train.epochs={cfg.train.epochs}) for PBT to perturb at all")
    _require(t.num_samples >= 4, where, f"needs a population of 4 or more (tune.num_samples={t.num_samples}): the "
             "bottom quarter takes the state of the top quarter")


def _validate_grid(t) -> None:
    for key, d in t.space.items():
        _require(d.type == "choice" and not d.when, f"tune.space.{key}",
                 "must be a choice without `when` for tune.algorithm=grid (a grid is every combination of values)")
    size = math.prod(len(d["values"]) for d in t.space.values())
    _require(t.num_samples == size, "tune.num_samples", f"must be {size}, the number of combinations of the grid, "
             f"for tune.algorithm=grid (got {t.num_samples})")


def searched_values(tune_config: dict) -> dict:
    """A trial's searched values ({config key: value}): its Tune config less what tune.py puts beside them."""
    return {k: v for k, v in tune_config.items() if k not in ("base", "experiment")}


def trial_config(base: dict, params: dict):
    """The config of one trial: the base config with the searched values set."""
    cfg = OmegaConf.create(base)
    if "method" in params:
        cfg.method = OmegaConf.merge(OmegaConf.structured(METHODS[params["method"]].Params),
                                     method_defaults(cfg.data.name, params["method"]))
    for key, value in params.items():
        if key != "method":
            OmegaConf.update(cfg, key, value)
    return cfg
