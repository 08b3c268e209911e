"""The Ray APIs that Ray does not promise to keep (raygap/ray_compat.py): present in the installed Ray,
and the search goes on without them."""

import sys

import ray
from ray.tune.experiment import Trial

from raygap import ray_compat


def test_the_installed_ray_still_has_every_api_raygap_relies_on():
    from ray._private.state import state

    assert callable(state.get_max_resources_from_cluster_config), ray.__version__
    assert "pickled_error_file" in dir(Trial), ray.__version__


def test_without_them_the_fallbacks_answer(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray._private.state", None)  # as a release without the module
    assert ray_compat.max_cluster_resources() == {}
    assert ray_compat.trial_error_file(object()) is None
