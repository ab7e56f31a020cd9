"""A Ray cluster of several nodes on this one machine, with the service deployed on it: what
``dfd bench cluster`` (:mod:`bench.cluster`) and the cluster tests run
(``ray.cluster_utils.Cluster``). The service on a single local Ray node is
:mod:`serve.local`.

Each node is a real raylet with its own declared resources (a GPU may be declared on a machine
without one: placement with GPU fractions is then exercised, the models run on the CPU). One
Serve proxy, on the head: every node's proxy would want the same port on one machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from pipeline.errors import ConfigError
from serve.local import free_port, wait_ready

__all__ = ["deploy", "free_port", "local_cluster"]

#: A lost raylet is declared dead after period x threshold (about 5 s, not Ray's 30 s default).
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}


@contextlib.contextmanager
def local_cluster(
    nodes: int,
    *,
    cpus_per_node: float,
    gpus_per_node: int = 1,
    system_config: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Start ``nodes`` Ray nodes here and connect this process to them; yields the
    :class:`ray.cluster_utils.Cluster` (``.address``, ``.worker_nodes``, ``.remove_node``).

    Token authentication is turned off (``RAY_AUTH_MODE=disabled``) and ``RAY_ADDRESS`` is
    ignored: this process talks to these nodes only.
    """
    import ray
    from ray.cluster_utils import Cluster

    if nodes < 1:
        raise ConfigError("a cluster needs at least one node")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": cpus_per_node,
            "num_gpus": gpus_per_node,
            "include_dashboard": False,
            "_system_config": dict(system_config or FAST_HEALTH_CHECKS),
        },
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node, num_gpus=gpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            yield cluster
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


def deploy(app: Any, port: int, *, ready_timeout_s: float = 600.0) -> str:
    """``serve.run`` the application on the connected cluster, one proxy on the head at
    ``127.0.0.1:port``; returns the base URL once ``/readyz`` answers 200."""
    from ray import serve

    from serve.app import APP_NAME

    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/")
    return wait_ready(f"http://127.0.0.1:{port}", ready_timeout_s)
