"""What ``dfd status`` (:mod:`serve.status`) reads from Ray beyond its public API, pinned: Ray
2.60 offers no public call that lists every replica with its node, target count and resources
(``serve.status()`` gives counts only; the dashboard's REST API needs a dashboard). When a Ray
upgrade removes one of these, this test names it, instead of ``dfd status`` failing on a
cluster; port :func:`serve.status.read_status` to what replaced it."""

from __future__ import annotations

import inspect

from ray.serve._private.client import ServeControllerClient
from ray.serve._private.replica import ReplicaActor
from ray.serve.schema import DeploymentDetails, ReplicaDetails, ServeInstanceDetails


def test_the_ray_internals_dfd_status_reads_are_still_there() -> None:
    import ray.serve.context

    assert ray.__version__ == "2.60.0", "re-check serve/status.py against this Ray"
    assert callable(ray.serve.context._get_global_client)
    assert callable(ServeControllerClient.get_serve_details)
    # Each replica's own count of ongoing requests.
    assert callable(ReplicaActor.get_num_ongoing_requests)
    # The fields read from the details, by name.
    assert "applications" in ServeInstanceDetails.model_fields

    fields = set(DeploymentDetails.model_fields)
    assert {"status", "message", "deployment_config", "target_num_replicas"} <= fields
    assert {"required_resources", "replicas"} <= fields
    assert {"replica_id", "state", "node_id", "actor_name"} <= set(ReplicaDetails.model_fields)
    assert "timeout_s" in inspect.signature(ray.serve.handle.DeploymentResponse.result).parameters


def test_ray_data_still_takes_max_task_retries_as_a_remote_argument() -> None:
    """The stages of a dataset run pass ``max_task_retries`` to ``map_batches`` as a remote
    argument (batch/stream.py): Ray 2.60 deprecates such arguments and offers no named one for
    it, and without it a video that kills its worker is retried forever. When Ray drops them
    (announced for 2.64), or gives it a named parameter, this fails: move the setting there."""
    import ray.data

    kinds = {p.kind for p in inspect.signature(ray.data.Dataset.map_batches).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD in kinds
    assert "max_task_retries" not in inspect.signature(ray.data.Dataset.map_batches).parameters
