"""What is deployed where, read from a running Ray cluster (``dfd status``).

Everything comes from Ray itself, never from a config file that may have drifted: the nodes and
their declared resources from the GCS, the deployments, their replicas, the node of each replica
and the resources Serve reserved for it (GPU fractions) from the Serve controller, the requests
each replica is working on from the replica (Serve answers that on a separate thread, so a busy
replica still answers), and the job queue from the job runner deployment.

Call :func:`read_status` in a process connected to the cluster (``ray.init(address=...)``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray import serve
from ray.serve.schema import ServeInstanceDetails

__all__ = [
    "ClusterStatus",
    "DeploymentStatus",
    "NodeStatus",
    "ReplicaStatus",
    "read_status",
]

log = logging.getLogger(__name__)

#: How long one replica or the runner may take to answer before it is reported as unknown.
ANSWER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    address: str
    alive: bool
    head: bool
    #: Declared resources (``CPU``, ``GPU``, ``memory`` bytes, custom ones).
    resources: dict[str, float]


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    state: str
    node_id: str | None
    #: Requests the replica is working on or has queued; ``None`` when it did not answer.
    ongoing_requests: int | None


@dataclass(frozen=True)
class DeploymentStatus:
    app: str
    name: str
    status: str
    message: str
    target_replicas: int
    #: ``(min, max)`` when autoscaling, else ``None``.
    autoscaling: tuple[int, int] | None
    #: What Serve reserves for each replica (``CPU``, ``GPU`` fractions...).
    resources_per_replica: dict[str, float]
    replicas: list[ReplicaStatus]

    @property
    def running(self) -> int:
        return sum(r.state == "RUNNING" for r in self.replicas)

    @property
    def gpus(self) -> float:
        """GPUs reserved by the running replicas together."""
        return self.running * float(self.resources_per_replica.get("GPU", 0.0))

    @property
    def ongoing_requests(self) -> int | None:
        """Requests in flight or queued at the replicas (``None`` when none answered)."""
        known = [r.ongoing_requests for r in self.replicas if r.ongoing_requests is not None]
        return sum(known) if known else None

    def replicas_per_node(self) -> dict[str, int]:
        counts = Counter(r.node_id or "?" for r in self.replicas if r.state == "RUNNING")
        return dict(counts)


@dataclass(frozen=True)
class ClusterStatus:
    nodes: list[NodeStatus]
    deployments: list[DeploymentStatus]
    #: The job runner's view: ``queued``, ``running`` counts in the store, and its own counters;
    #: empty when the application has no runner or it did not answer.
    jobs: dict[str, Any] = field(default_factory=dict)

    def deployment(self, name: str) -> DeploymentStatus:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(f"no deployment named {name!r}")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for d_json, d in zip(out["deployments"], self.deployments, strict=True):
            d_json.update(
                running=d.running,
                gpus=d.gpus,
                ongoing_requests=d.ongoing_requests,
                replicas_per_node=d.replicas_per_node(),
            )
        return out


def _nodes() -> list[NodeStatus]:
    out = []
    for n in ray.nodes():
        resources = {k: float(v) for k, v in n.get("Resources", {}).items()}
        out.append(
            NodeStatus(
                node_id=str(n["NodeID"]),
                address=str(n.get("NodeManagerAddress", "")),
                alive=bool(n.get("Alive", False)),
                head="node:__internal_head__" in resources,
                resources={k: v for k, v in resources.items() if not k.startswith("node:")},
            )
        )
    return sorted(out, key=lambda n: (not n.head, not n.alive, n.node_id))


def _ongoing(actor_names: list[str | None]) -> list[int | None]:
    """Each replica's own count of ongoing requests (``None`` for those that did not answer)."""
    refs: list[Any] = []
    for name in actor_names:
        try:
            actor = ray.get_actor(name, namespace="serve") if name else None
            refs.append(actor.get_num_ongoing_requests.remote() if actor else None)
        except ValueError:  # the replica is gone since the controller listed it
            refs.append(None)
    live = [r for r in refs if r is not None]
    ready, _ = ray.wait(live, num_returns=len(live), timeout=ANSWER_TIMEOUT_S) if live else ([], [])
    answers: list[int | None] = []
    for ref in refs:
        try:
            answers.append(int(ray.get(ref)) if ref is not None and ref in ready else None)
        except ray.exceptions.RayError:
            answers.append(None)
    return answers


def _jobs(app: str, deployment_names: set[str]) -> dict[str, Any]:
    if "JobRunner" not in deployment_names:
        return {}
    try:
        runner = serve.get_deployment_handle("JobRunner", app_name=app)
        return dict(runner.queue.remote().result(timeout_s=ANSWER_TIMEOUT_S))
    except Exception as exc:  # a status command reports what it cannot read, it does not fail
        log.warning("the job runner did not answer: %s", exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def read_status(app: str | None = None) -> ClusterStatus:
    """Nodes, deployments (of ``app`` or of every application) and the job queue.

    Raises:
        RuntimeError: Serve is not running on the connected cluster.
    """
    from ray.serve.context import _get_global_client

    nodes = _nodes()
    try:
        client = _get_global_client()
    except Exception as exc:
        raise RuntimeError(f"Serve is not running on this Ray cluster ({exc})") from exc
    if client is None:
        raise RuntimeError("Serve is not running on this Ray cluster")
    details = ServeInstanceDetails(**client.get_serve_details())
    deployments: list[DeploymentStatus] = []
    jobs: dict[str, Any] = {}
    for app_name, app_details in sorted(details.applications.items()):
        if app is not None and app_name != app:
            continue
        for name, d in sorted(app_details.deployments.items()):
            auto: Any = d.deployment_config.autoscaling_config
            auto_range = None
            if isinstance(auto, dict):
                auto_range = (int(auto.get("min_replicas", 1)), int(auto.get("max_replicas", 1)))
            elif hasattr(auto, "min_replicas"):  # unset fields hold Serve's DEFAULT sentinel
                auto_range = (int(auto.min_replicas), int(auto.max_replicas))
            ongoing = _ongoing([r.actor_name for r in d.replicas])
            replicas = [
                ReplicaStatus(
                    replica_id=r.replica_id,
                    state=str(getattr(r.state, "value", r.state)),
                    node_id=r.node_id,
                    ongoing_requests=n,
                )
                for r, n in zip(d.replicas, ongoing, strict=True)
            ]
            deployments.append(
                DeploymentStatus(
                    app=app_name,
                    name=name,
                    status=str(getattr(d.status, "value", d.status)),
                    message=d.message,
                    target_replicas=int(d.target_num_replicas),
                    autoscaling=auto_range,
                    resources_per_replica={
                        k: float(v) for k, v in d.required_resources.items() if v
                    },
                    replicas=replicas,
                )
            )
        jobs = jobs or _jobs(app_name, set(app_details.deployments))
    if app is not None and not deployments:
        raise RuntimeError(f"no Serve application named {app!r} on this cluster")
    return ClusterStatus(nodes, deployments, jobs)
