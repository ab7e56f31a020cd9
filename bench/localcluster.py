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

__all__ = ["apply_config", "deploy", "deploy_config", "free_port", "local_cluster"]

#: A lost raylet is declared dead after period x threshold (about 5 s, not Ray's 30 s default).
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}


@contextlib.contextmanager
def local_cluster(
    nodes: int,
    *,
    cpus_per_node: float,
    gpus_per_node: int = 1,
    work_on_head: bool = True,
    system_config: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Start ``nodes`` Ray nodes here and connect this process to them; yields the
    :class:`ray.cluster_utils.Cluster` (``.address``, ``.worker_nodes``, ``.remove_node``).

    ``work_on_head=False`` declares no CPU or GPU on the head, as ``cluster.yaml`` and the
    RayService do: it runs Ray's own processes and Serve's controller and proxy, and no replica
    or task of the application (the other nodes are workers).

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
            "num_cpus": cpus_per_node if work_on_head else 0,
            "num_gpus": gpus_per_node if work_on_head else 0,
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

    _start_serve(port)
    serve.run(app, name=APP_NAME, route_prefix="/")
    return wait_ready(f"http://127.0.0.1:{port}", ready_timeout_s)


def _start_serve(port: int) -> None:
    """Serve with one proxy, on the head, at ``127.0.0.1:port``."""
    from ray import serve

    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})


def deploy_config(
    args: Mapping[str, Any],
    deployments: list[dict[str, Any]],
    port: int,
    *,
    ready_timeout_s: float = 600.0,
) -> str:
    """The application deployed the way ``serve deploy`` deploys ``serve/config.yaml``: Serve
    builds it from ``args`` (:func:`serve.app.build_app_from_env`, in a task on the cluster)
    and applies ``deployments`` (the YAML's ``deployments[]`` entries) over the code's options.
    One proxy on the head at ``127.0.0.1:port``; returns the base URL once ``/readyz`` answers.
    """
    _start_serve(port)
    apply_config(args, deployments)
    return wait_ready(f"http://127.0.0.1:{port}", ready_timeout_s)


def apply_config(
    args: Mapping[str, Any], deployments: list[dict[str, Any]], *, timeout_s: float = 600.0
) -> None:
    """Apply a Serve config of the one application to the running Serve instance (what
    ``serve deploy`` sends; the dashboard it goes through is not started here), and wait until
    Serve reports the application running (a change that needs no new replica may never leave
    that state: wait for its effect as well).

    Raises:
        RuntimeError: Serve could not deploy it (its message), or ``timeout_s`` passed.
    """
    import time

    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from serve.app import APP_NAME

    app = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": "serve.app:build_app_from_env",
        "args": dict(args),
        "deployments": deployments,
    }
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not started on this cluster")
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"Serve could not deploy {APP_NAME}: {status.message}")
        if status is not None and status.status == "RUNNING":
            return
        time.sleep(0.5)
    raise RuntimeError(f"{APP_NAME} not running {timeout_s:g} s after the config was applied")
