"""The service on local Ray in this process: start it, wait until it is ready, stop it (what
``dfd serve``, ``dfd bench serve`` and the service tests run), and a free loopback port for it.

A cluster of several nodes on this machine is :mod:`bench.localcluster`.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import httpx

from pipeline.errors import ConfigError

__all__ = ["free_port", "start_service", "stop_service", "wait_ready"]


def start_service(
    config: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    ready_timeout_s: float = 600.0,
) -> str:
    """Start local Ray, Serve on ``host:port`` and the application; return its URL once
    ``/readyz`` answers. ``config`` is a :class:`serve.config.ServiceConfig`.

    Ray is told about enough logical CPUs for every replica's fraction (a laptop has fewer
    cores than the eleven replicas ask for in total; they share them).
    """
    import ray
    from ray import serve

    from serve.app import APP_NAME, build_app

    d = config.deployments
    n_members = len(config.analysis.inference.members or []) or 5
    needed = (
        d.ingress.num_cpus
        + d.runner.num_cpus
        + d.detector.num_cpus
        + d.embedder.num_cpus
        + d.features.num_cpus
        + n_members * d.members.num_cpus
    )
    cpus = num_cpus if num_cpus is not None else max(os.cpu_count() or 1, math.ceil(needed))
    ray.init(
        address="local",
        num_cpus=cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    return wait_ready(url, ready_timeout_s)


def wait_ready(url: str, timeout_s: float) -> str:
    """Poll ``<url>/readyz`` until it answers 200; returns ``url``.

    Raises:
        ConfigError: not ready within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ConfigError(f"the service did not become ready within {timeout_s:.0f} s")
        time.sleep(0.5)


def stop_service() -> None:
    """Shut down Serve, then Ray."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
