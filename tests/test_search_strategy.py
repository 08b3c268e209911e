"""How the search spends its compute: Pareto-aware early stopping, warm starts, grids (Optuna itself, no Ray)."""

import functools
import json
import math

import optuna
import pytest

from helpers import run_main
from raygap import config, results, schema, searcher
from raygap.errors import UserError
from raygap.stopping import pareto_keeps, rungs

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_rungs_are_asha_s():
    assert rungs(6, 2, 2) == [2, 4]
    assert rungs(20, 4, 2) == [4, 8, 16]
    assert rungs(2, 2, 2) == []


def test_pareto_stopping_keeps_the_front_s_ends_and_stops_the_dominated():
    # (robust, clean) of three trials already at the rung
    recorded = [(0.60, 0.90), (0.55, 0.92), (0.50, 0.93)]
    assert pareto_keeps((0.30, 0.99), recorded, reduction_factor=2)  # worst robust, best clean: kept
    assert pareto_keeps((0.65, 0.50), recorded, reduction_factor=2)  # best robust: kept
    assert not pareto_keeps((0.40, 0.80), recorded, reduction_factor=2)  # dominated by all three
    # dominated by one of four at the rung: kept with halving (ceil(4 / 2) = 2 dominators stop it)
    assert pareto_keeps((0.52, 0.91), recorded, reduction_factor=2)
    assert not pareto_keeps((0.52, 0.91), recorded, reduction_factor=4)  # ceil(4 / 4) = 1 dominator stops it


def afd(*overrides, storage):
    """The default search's config (AFD on digits)."""
    return config.load([f"storage={storage}", *overrides], "afd")


def earlier_search(tmp_path, peak=25.0, n=30):
    """An earlier experiment's trials table over the default AFD space: robust accuracy peaks at align_weight = peak.
    Written as searches wrote it before trials kept their best epoch (no kept_* columns: the last epoch's)."""
    cfg = afd(storage=tmp_path)
    experiment = tmp_path / "earlier"
    rows = []
    for i in range(n):
        weight = math.exp(math.log(1.0) + (math.log(50.0) - math.log(1.0)) * (i + 0.5) / n)
        rows.append({"experiment": "earlier", "trial_id": f"t{i}", "status": "completed" if i % 5 else "stopped_early",
                     "robust_acc": 0.8 - 0.1 * math.log(weight / peak) ** 2, "clean_acc": 0.9,
                     "params": json.dumps({"method.align_weight": weight}), "method.name": "afd",
                     "method.align_weight": weight, "method.disentangler_size": 32, "attack.eps": 0.1})
    results.write(str(experiment / "trials" / "part.parquet"), rows, results.trials_schema(cfg))
    return experiment


def first_suggestions(cfg, warm, n=10):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    if warm:
        warm.tell(study)
    space = schema.as_dict(cfg.tune.space)
    suggested = []
    for _ in range(n):
        trial = study.ask()
        searcher.suggest(trial, space)
        suggested.append(trial.params["method.align_weight"])
    return study, suggested


def test_a_warm_start_tells_the_searcher_the_earlier_completed_trials(tmp_path, capsys):
    earlier = earlier_search(tmp_path)
    cfg = afd("tune.warm_start=earlier", storage=tmp_path)  # a name under storage
    warm = searcher.warm_start(cfg)
    assert warm.completed == 24 and len(warm.trials) == 24  # the 6 stopped early are not told
    warm_study, warm_picks = first_suggestions(cfg, warm)
    assert "warm start: 24 of the 24 completed trials" in capsys.readouterr().out
    told = [t for t in warm_study.trials if "warm_start" in t.user_attrs]
    assert len(told) == 24 and all(t.params["attack.eps"] == 0.1 for t in told)  # fixed before, searched now
    _, cold_picks = first_suggestions(cfg, None)
    distance = lambda picks: sum(abs(math.log(w / 25.0)) for w in picks) / len(picks)  # noqa: E731
    assert distance(warm_picks) < 0.6 * distance(cold_picks)  # TPE samples near the earlier best at once
    warm.tell(warm_study)  # told once: a resumed search's study is not told again
    assert sum("warm_start" in t.user_attrs for t in warm_study.trials) == 24
    assert searcher.warm_start(afd(f"tune.warm_start={earlier}", storage=tmp_path / "other")).completed == 24


def test_a_warm_start_drops_values_outside_the_new_space(tmp_path):
    earlier_search(tmp_path)
    narrow = "tune.space={method.align_weight:{type:loguniform,low:10.0,high:50.0}}"
    warm = searcher.warm_start(afd("tune.warm_start=earlier", narrow, storage=tmp_path))
    weights = [t.params.get("method.align_weight") for t in warm.trials]
    assert len(warm.trials) == 24  # every trial keeps its other keys
    assert sum(w is None for w in weights) > 0 and all(w is None or 10 <= w <= 50 for w in weights)


@pytest.mark.parametrize("overrides,message", [
    (["tune.warm_start=nowhere"], "tune.warm_start: no experiment 'nowhere'"),
    (["search=SPACE", "tune.warm_start=earlier"],
     "searched method.align_weight, which shares no key with this space (train.lr)"),
])
def test_a_bad_warm_start_is_one_line_before_anything_runs(tmp_path, overrides, message):
    earlier_search(tmp_path)
    space = tmp_path / "lr_only.yaml"
    space.write_text("defaults: [raygap, budget: laptop, _self_]\ntune:\n  space:\n"
                     "    train.lr: {type: loguniform, low: 0.001, high: 0.1}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_main("tune", f"storage={tmp_path}", *[o.replace("SPACE", str(space)) for o in overrides])
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("raygap: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no experiment, no pre-trained model


GRID = ("defaults: [raygap, budget: laptop, _self_]\ntune:\n  space:\n"
        "    attack.eps: {type: choice, values: [0.1, 0.2]}\n"
        "    method.disentangler_size: {type: choice, values: [2, 8]}\n")


def grid_space(tmp_path) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    return str(path)


def test_a_grid_asks_for_every_combination_once(tmp_path):
    cfg = config.load([f"storage={tmp_path}", "tune.algorithm=grid", "tune.num_samples=4"], grid_space(tmp_path))
    seen = set()

    def objective(trial):
        searcher.suggest(trial, schema.as_dict(cfg.tune.space))
        seen.add(tuple(sorted(trial.params.items())))
        return 0.0

    study = optuna.create_study(sampler=searcher.sampler(cfg))
    study.optimize(objective, n_trials=8)  # the grid stops the study once every combination is done
    assert len(seen) == 4 and len(study.trials) == 4


@pytest.mark.parametrize("space,overrides,message", [
    ("afd", ["tune.algorithm=grid"],
     "tune.space.method.align_weight must be a choice without `when` for tune.algorithm=grid"),
    ("grid", ["tune.algorithm=grid", "tune.num_samples=3"], "tune.num_samples must be 4, the number of combinations"),
    ("afd", ["tune.scheduler.name=pareto_asha"], "tune.scheduler.name=pareto_asha stops trials on several objectives"),
    ("afd", ["tune.startup_trials=9"], "tune.startup_trials=9 must lie in [0, tune.num_samples=8]"),
    ("afd", ["tune.algorithm=random", "tune.startup_trials=2"],
     "tune.startup_trials sizes the random start of tune.algorithm=tpe or gp, and tune.algorithm=random has none"),
    ("afd", ["tune.algorithm=gp", "tune.multivariate=true"], "tune.multivariate is an option of tune.algorithm=tpe"),
])
def test_bad_search_strategies_are_refused(tmp_path, space, overrides, message):
    name = grid_space(tmp_path) if space == "grid" else space
    with pytest.raises(UserError) as refused:
        config.load([f"storage={tmp_path}", *overrides], name)
    assert message in str(refused.value)


@pytest.mark.parametrize("algorithm", ["tpe", "gp"])
def test_the_sampler_leaves_its_random_start_after_tune_startup_trials(tmp_path, algorithm):
    """The first startup_trials trials of TPE and GP are their random sampler's (the same draws as Optuna's
    RandomSampler with the seed); the next one is modelled, so it differs. Without the key: a quarter of
    tune.num_samples, at least 2 (not Optuna's 10, which would make a search of 10 trials random search)."""
    random = draws(tmp_path, [f"tune.algorithm={algorithm}"], 6, random=True)
    given = draws(tmp_path, [f"tune.algorithm={algorithm}", "tune.startup_trials=3"], 6)
    assert given[:3] == random[:3] and given[3] != random[3]
    sized = draws(tmp_path, [f"tune.algorithm={algorithm}", "tune.num_samples=16"], 6)  # a quarter: 4
    assert sized[:4] == random[:4] and sized[4] != random[4]
    smallest = draws(tmp_path, [f"tune.algorithm={algorithm}", "tune.num_samples=7"], 6)  # at least 2
    assert smallest[:2] == random[:2] and smallest[2] != random[2]


def test_a_search_of_one_objective_is_gp_with_a_sized_start_up_unless_told_otherwise(tmp_path):
    """tune.algorithm=auto is Optuna's GP for one objective (benchmarks/README.md says why), started by a
    quarter of the trials: its draws are GP's, not TPE's."""
    auto, gp, tpe = (draws(tmp_path, overrides, 6) for overrides in ([], ["tune.algorithm=gp"], ["tune.algorithm=tpe"]))
    assert auto == gp and auto[2:] != tpe[2:]


def draws(tmp_path, overrides: list, n: int, random: bool = False) -> list:
    """The first n configurations the searcher of the afd space asks for, on a made-up objective."""
    cfg = config.load([f"storage={tmp_path}", *overrides], "afd")
    sampler = optuna.samplers.RandomSampler(seed=cfg.tune.seed) if random else searcher.sampler(cfg)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    suggest = functools.partial(searcher.suggest, space=schema.as_dict(cfg.tune.space))
    study.optimize(lambda trial: suggest(trial) or trial.params["train.lr"] * trial.params["attack.eps"], n)
    return [t.params for t in study.trials]


def test_tune_multivariate_says_whether_tpe_models_the_keys_jointly(tmp_path):
    """Optuna 5's TPE is multivariate by default for one objective: left out, the key keeps that default;
    false makes TPE sample each key alone, which draws differently once the start-up is over."""

    def tpe(*overrides: str) -> list:
        return draws(tmp_path, ["tune.algorithm=tpe", "tune.startup_trials=3", *overrides], 8)

    default, joint, alone = tpe(), tpe("tune.multivariate=true"), tpe("tune.multivariate=false")
    assert default == joint and alone[:3] == default[:3] and alone[3:] != default[3:]


def test_a_resumed_searcher_drops_results_of_a_trial_the_study_has_finished(tmp_path):
    """The study is written at once, the searcher state only now and then: after a killed driver, Tune
    runs again a trial whose end the study holds, and its last epoch is reported again."""
    from ray.tune.search.optuna import OptunaSearch

    cfg = afd(storage=tmp_path)
    for kind in (OptunaSearch, searcher.ResumableOptunaSearch):
        search = kind(space=functools.partial(searcher.suggest, space={"x": {"type": "uniform", "low": 0, "high": 1}}),
                      metric="robust_acc", mode="max",
                      study_name=kind.__name__, storage=optuna.storages.InMemoryStorage(),
                      sampler=searcher.sampler(cfg))
        search.suggest("t1")
        study, number = searcher.ray_compat.optuna_trial(search, "t1")
        study.tell(number, 0.5)  # the study has the trial's end; the restored searcher does not
        result = {"robust_acc": 0.5, "training_iteration": 2}
        if kind is OptunaSearch:
            with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
                search.on_trial_result("t1", result)
        else:
            search.on_trial_result("t1", result)
            assert study.trials[number].intermediate_values == {}  # dropped, and the search goes on
