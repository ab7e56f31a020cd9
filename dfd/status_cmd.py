"""``dfd status``: what is deployed where on a running Ray cluster, read from Ray."""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dfd.common import cli_errors, out_console
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from serve.status import ClusterStatus

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster address (head:port, ray://head:10001); default $RAY_ADDRESS, "
        "else the cluster running on this machine.",
    ),
]


def _short(node_id: str | None) -> str:
    return (node_id or "?")[:8]


def _fraction(value: float) -> str:
    return f"{value:g}"


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot connect to a Ray cluster at {address}: {exc}") from exc


@cli_errors
def status(
    address: AddressOpt = None,
    app: Annotated[
        str | None, typer.Option(help="Only this Serve application (default: all).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Nodes, deployments (replicas per node, GPU fractions, requests queued at the replicas)
    and the job queue of the service on a Ray cluster."""
    import ray

    from serve.status import read_status

    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    _reachable(target)
    try:
        ray.init(
            address=target,
            namespace="serve",
            log_to_driver=False,
            configure_logging=False,
            logging_level=logging.ERROR,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot connect to a Ray cluster at {target}: {exc}") from exc
    try:
        try:
            st = read_status(app)
        except RuntimeError as exc:
            raise ConfigError(str(exc)) from exc
    finally:
        ray.shutdown()
    if json_out:
        print(json.dumps(st.to_json(), indent=2, default=str))
        return
    out_console.print(_nodes_table(st))
    out_console.print(_deployments_table(st))
    if st.jobs:
        out_console.print(_jobs_line(st.jobs))


def _nodes_table(st: ClusterStatus) -> Table:
    """One row per node: address, role, resources, replicas and the GPU they reserve."""
    nodes = Table(title="Nodes")
    for col in ("node", "address", "role", "alive", "CPU", "GPU", "replicas", "GPU reserved"):
        nodes.add_column(col, justify="right" if col in ("CPU", "GPU", "replicas") else "left")
    for n in st.nodes:
        on_node = [
            (d, count)
            for d in st.deployments
            for node_id, count in d.replicas_per_node().items()
            if node_id == n.node_id
        ]
        reserved = sum(count * d.resources_per_replica.get("GPU", 0.0) for d, count in on_node)
        nodes.add_row(
            _short(n.node_id),
            n.address,
            "head" if n.head else "worker",
            "yes" if n.alive else "[red]dead[/]",
            _fraction(n.resources.get("CPU", 0.0)),
            _fraction(n.resources.get("GPU", 0.0)),
            str(sum(count for _, count in on_node)),
            _fraction(round(reserved, 4)),
        )
    return nodes


def _deployments_table(st: ClusterStatus) -> Table:
    """One row per deployment: status, replicas, resources each, placement, queued requests."""
    deps = Table(title="Deployments")
    for col in ("app", "deployment", "status", "replicas", "autoscaling", "GPU each", "CPU each"):
        deps.add_column(col)
    deps.add_column("per node")
    deps.add_column("ongoing requests", justify="right")
    for d in st.deployments:
        auto = f"{d.autoscaling[0]}-{d.autoscaling[1]}" if d.autoscaling else "-"
        ongoing = d.ongoing_requests
        deps.add_row(
            d.app,
            d.name,
            d.status if d.status == "HEALTHY" else f"[yellow]{d.status}[/]",
            f"{d.running}/{d.target_replicas}",
            auto,
            _fraction(d.resources_per_replica.get("GPU", 0.0)),
            _fraction(d.resources_per_replica.get("CPU", 0.0)),
            ", ".join(f"{_short(k)} x{v}" for k, v in sorted(d.replicas_per_node().items())),
            "?" if ongoing is None else str(ongoing),
        )
    return deps


def _jobs_line(jobs: dict[str, Any]) -> str:
    """The job queue, and the busy slots of the runner that answered."""
    if "error" in jobs:
        return f"jobs: the runner did not answer ({jobs['error']})"
    runner = jobs.get("runner", {})
    return (
        f"jobs: {jobs['queued']} queued, {jobs['running']} running "
        f"(this runner: {len(runner.get('running', []))} of "
        f"{runner.get('concurrency', '?')} slots busy)"
    )
