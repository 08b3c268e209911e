"""Connecting to Ray: join the cluster at RAY_ADDRESS (as under `ray job submit`) or start a local one.

A local cluster listens on 127.0.0.1 only, so it runs without token authentication (RAY_AUTH_MODE
defaults to disabled for it) and its dashboard is not reachable from other machines.
"""

from __future__ import annotations

import os

from raygap.errors import UserError


def joins_existing_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def local_resources() -> dict:
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def _refuse(need: dict, have: dict, where: str):
    for key, amount in need.items():
        if amount > have.get(key, 0) + 1e-9:
            raise UserError(f"the run needs {amount:g} {key} but {where} has at most {have.get(key, 0):g}; "
                            f"lower train.workers, train.cpus_per_worker or train.gpus_per_worker (or "
                            f"tune.max_concurrent), or use a larger cluster")


def check_resources(need: dict, per_worker: dict) -> None:
    """Refuse, before anything waits on them, resources that the cluster can never provide.

    need: the total of one run at a time; per_worker: what one worker needs on a single node. On a local
    cluster the limits are this machine's; on an existing cluster, what its autoscaler may add (when it
    publishes its node types). A local cluster is checked before it starts.
    """
    if not joins_existing_cluster():
        have = local_resources()
        _refuse(need, have, "this machine")
        _refuse(per_worker, have, "this machine")
        return
    connect()
    from ray._private import state  # Ray Train makes the same check with the same private helper

    maximum = state.state.get_max_resources_from_cluster_config()
    if maximum:
        _refuse(need, {k: float(v) for k, v in maximum.items()}, "the cluster, even fully scaled up,")
    # Without published node types the cluster may still grow, so nothing is refused: Ray waits.


def connect() -> None:
    """ray.init once: join RAY_ADDRESS when it is set, else start a local cluster on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    if joins_existing_cluster():
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING")
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray Train's controller polls its workers every 2 s by default: a worker that dies within that
    # window of a report loses the report's checkpoint, and every run waits on a few polls to start.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1", logging_level="WARNING")
