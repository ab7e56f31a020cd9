"""A four-node Ray cluster on this machine (:func:`bench.localcluster.local_cluster`, what
``dfd bench cluster`` runs): a head that declares no CPU or GPU (it runs Ray and Serve's own
processes only, as in ``cluster.yaml``) and three workers declaring one GPU each, with the whole
service deployed on it the way ``serve deploy`` deploys ``serve/config.yaml``: Serve builds the
application with :func:`serve.app.build_app_from_env` from the YAML's ``args`` and applies its
``deployments[]`` entries, with Redis (the real server on 127.0.0.1:6379) and S3 (moto's server
on loopback) given by ``DFD_*`` variables.

Started once for the module that uses it (about two minutes on 2 cores). A Ray instance left by
another module is shut down first: a process can be connected to one cluster only.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from serve.app import deployment_entries
from serve.autoscaling import JOB_QUEUE_POLICY
from serve.config import (
    AutoscalingSettings,
    ModelDeploymentSettings,
    ReplicaSettings,
    ServiceConfig,
)
from tests.serve.conftest import analysis_settings, free_port
from tests.support.models import make_model_dir
from tests.support.s3server import moto_s3_server

#: Nodes of the test cluster, the head included; each worker declares this many logical CPUs
#: and one GPU, the head none.
NODES = 4
WORKERS = NODES - 1
CPUS_PER_NODE = 3
#: Autoscaling of the face detector and the five detectors of the ensemble, with delays short
#: enough for a test. With tiny test models MTCNN is the bottleneck (full-size members would be).
MODEL_AUTOSCALING = AutoscalingSettings(
    min_replicas=1,
    max_replicas=2,
    # Tiny test models answer in milliseconds: a low target makes sustained load visible.
    target_ongoing_requests=0.5,
    upscale_delay_s=1.0,
    downscale_delay_s=4.0,
    look_back_period_s=2.0,
    metrics_interval_s=0.5,
)
GPU_FRACTIONS = {"detector": 0.15, "embedder": 0.10, "features": 0.10, "members": 0.12}


@dataclass
class RayCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    base_url: str
    redis_url: str
    redis_prefix: str
    s3_endpoint: str
    bucket: str
    model_dir: Path
    args: dict[str, Any]
    #: The Serve config's ``deployments[]`` entries applied over the application's code.
    deployments: list[dict[str, Any]]

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60, **kwargs)

    def worker_nodes(self) -> list[Any]:
        return list(self.cluster.worker_nodes)


def service_args(home: Path, model_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Serve YAML's ``args`` for the test cluster (Redis and S3 come from ``DFD_*``), and
    its ``deployments[]`` entries."""
    small = {"num_cpus": 0.25}
    f = GPU_FRACTIONS
    deployments = {
        "ingress": ReplicaSettings(num_replicas=2, num_cpus=0.1, max_ongoing_requests=100),
        # On the job queue: a second runner once more jobs wait or run than one runner's
        # slots (jobs.concurrency below).
        "runner": ReplicaSettings(
            num_cpus=0.25,
            autoscaling=MODEL_AUTOSCALING.model_copy(update={"policy": JOB_QUEUE_POLICY}),
        ),
        "detector": ModelDeploymentSettings(
            num_gpus=f["detector"], autoscaling=MODEL_AUTOSCALING, **small
        ),
        "embedder": ModelDeploymentSettings(num_gpus=f["embedder"], **small),
        "features": ModelDeploymentSettings(num_gpus=f["features"], **small),
        "members": ModelDeploymentSettings(
            num_gpus=f["members"], autoscaling=MODEL_AUTOSCALING, **small
        ),
    }
    args = {
        "home": str(home),
        "auth": {"mode": "off", "anonymous_rate_per_min": 1_000_000},  # tests poll fast
        "gpus": "on",
        "jobs": {
            "heartbeat_s": 1.0,
            "stale_after_s": 8.0,
            "recovery_interval_s": 1.0,
            "concurrency": 4,
        },
        "analysis": analysis_settings(model_dir, shot_workers=4).model_dump(mode="json"),
    }
    config = ServiceConfig.model_validate({**args, "deployments": deployments})
    return args, deployment_entries(config)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    import ray
    from ray import serve

    from bench.localcluster import deploy_config, local_cluster

    root = tmp_path_factory.mktemp("cluster")
    model_dir = root / "models"
    make_model_dir(model_dir)
    prefix = f"dfd-test-{uuid.uuid4().hex[:8]}:"
    redis_url = "redis://127.0.0.1:6379/0"
    bucket = "dfd-cluster-test"
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("RAY_ADDRESS", raising=False)
        if ray.is_initialized():
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
        endpoint = stack.enter_context(moto_s3_server())
        # What cluster.yaml puts in every node's environment.
        env = {
            "DFD_REDIS_URL": redis_url,
            "DFD_REDIS_PREFIX": prefix,
            "DFD_STORAGE__KIND": "s3",
            "DFD_STORAGE__BUCKET": bucket,
            "DFD_STORAGE__ENDPOINT_URL": endpoint,
            "DFD_STORAGE__ACCESS_KEY": "test",
            "DFD_STORAGE__SECRET_KEY": "test",
            "DFD_STORAGE__CREATE_BUCKET": "true",
        }
        for k, v in env.items():
            mp.setenv(k, v)
        cluster = stack.enter_context(
            local_cluster(NODES, cpus_per_node=CPUS_PER_NODE, work_on_head=False)
        )
        stack.callback(serve.shutdown)
        args, deployments = service_args(root / "home", model_dir)
        base = deploy_config(args, deployments, free_port(), ready_timeout_s=400)
        stack.callback(_drop_redis_keys, redis_url, prefix)
        yield RayCluster(
            cluster, base, redis_url, prefix, endpoint, bucket, model_dir, args, deployments
        )


def _drop_redis_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
