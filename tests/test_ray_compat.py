"""The Ray APIs that Ray does not promise to keep (raygap/ray_compat.py): each present in the installed Ray,
and the search goes on without it."""

import importlib
import logging
import sys

import ray
from ray.tune.experiment import Trial
from ray.tune.search.optuna import OptunaSearch

from raygap import ray_compat


def test_the_installed_ray_still_has_every_api_raygap_relies_on():
    from ray._private.state import state

    assert callable(state.get_max_resources_from_cluster_config), ray.__version__  # max_cluster_resources
    assert "pickled_error_file" in dir(Trial), ray.__version__  # trial_error_file
    importlib.import_module(ray_compat.CHECKPOINT_LOGGER)  # quiet_checkpoint_lines: the logger is its module's
    search = OptunaSearch(space={"x": ray.tune.uniform(0, 1)}, metric="m", mode="max", seed=0)
    search.suggest("t1")
    study, number = ray_compat.optuna_trial(search, "t1")  # optuna_trial: the private _ot_study and _ot_trials
    assert (study.trials[0].number, number) == (0, 0), ray.__version__
    assert ray_compat.optuna_asked(search, "t1").number == 0, ray.__version__  # optuna_asked: _ot_trials


def test_without_them_the_fallbacks_answer(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray._private.state", None)  # as a release without the module
    assert ray_compat.max_cluster_resources() == {}
    assert ray_compat.trial_error_file(object()) is None
    assert ray_compat.optuna_trial(object(), "t1") == (None, None)
    assert ray_compat.optuna_asked(object(), "t1") is None
    ray_compat.quiet_checkpoint_lines()
    assert logging.getLogger(ray_compat.CHECKPOINT_LOGGER).level == logging.WARNING
