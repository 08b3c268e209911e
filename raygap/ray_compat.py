"""The Ray APIs raygap uses that Ray does not promise to keep (a private module, developer-API
attributes, an internal logger's name), in one place, each with a fallback that keeps a search running
when a release removes it. Tested with Ray 2.60 (pyproject.toml); tests/test_ray_compat.py fails on a
Ray where one of them is gone, so that the fallback is known to be in use.
"""

from __future__ import annotations

import logging

# Ray Train logs a line per checkpoint on this logger (an internal module's name).
CHECKPOINT_LOGGER = "ray.train._internal.storage"


def max_cluster_resources() -> dict:
    """What the cluster may scale up to, from its autoscaler's published node types; {} when unknown.

    Fallback: {} (nothing is refused up front; Ray waits for resources that never come, as without it).
    """
    try:
        from ray._private.state import state  # Ray Train makes the same check with the same private helper

        return state.get_max_resources_from_cluster_config() or {}
    except (ImportError, AttributeError):
        return {}


def trial_error_file(trial) -> str | None:
    """The driver's local copy of a failed trial's pickled exception (a developer-API attribute of Trial).

    Fallback: None (the trials table then says "unknown error" and points to the trial's error.txt).
    """
    return getattr(trial, "pickled_error_file", None)


def quiet_checkpoint_lines() -> None:
    """Not a line per checkpoint. Fallback: a renamed logger is simply not quietened."""
    logging.getLogger(CHECKPOINT_LOGGER).setLevel(logging.WARNING)


def optuna_asked(search, trial_id: str):
    """The optuna.Trial that Ray's OptunaSearch asked for a Tune trial, in its private `_ot_trials`.
    Fallback: None (the study does not name its Tune trials: searcher.TUNE_TRIAL_ID)."""
    return getattr(search, "_ot_trials", {}).get(trial_id)


def optuna_trial(search, trial_id: str) -> tuple:
    """(study, Optuna trial number) that Ray's OptunaSearch keeps for a Tune trial, in its private
    `_ot_study` and `_ot_trials`. Fallback: (None, None), and every result goes to Optuna as Ray sends it."""
    return getattr(search, "_ot_study", None), getattr(optuna_asked(search, trial_id), "number", None)
