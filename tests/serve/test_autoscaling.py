"""The job runner's autoscaling policy (serve/autoscaling.py) on Serve's own context object;
the policy scaling a running cluster's runners is in tests/cluster."""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext
from ray.serve.schema import DeploymentSchema

from serve.autoscaling import (
    JOB_QUEUE_POLICY,
    JOB_SLOTS,
    QUEUED_JOBS,
    RUNNING_JOBS,
    job_queue_policy,
)
from serve.config import AutoscalingSettings, ReplicaSettings

RUNNER = DeploymentID(name="JobRunner", app_name="dfd")


def context(reports: dict[str, list[float]], target: int = 2) -> AutoscalingContext:
    replicas = [ReplicaID(f"r{i}", RUNNER) for i in range(target)]
    metrics = {name: dict(zip(replicas, values, strict=False)) for name, values in reports.items()}
    return AutoscalingContext(
        deployment_id=RUNNER,
        deployment_name="JobRunner",
        app_name="dfd",
        current_num_replicas=target,
        target_num_replicas=target,
        running_replicas=replicas,
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics=metrics,
        raw_metrics=None,
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=8,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=None,
    )


@pytest.mark.parametrize(
    ("queued", "running", "slots", "want"),
    [(0, 0, 4, 0), (0, 3, 4, 1), (5, 4, 4, 3), (30, 8, 4, 10), (1, 0, 1, 1)],
)
def test_runners_follow_the_job_queue(queued: int, running: int, slots: int, want: int) -> None:
    # Every replica reports the store's counts (one may lag behind: the largest counts).
    reports = {
        QUEUED_JOBS: [queued, max(queued - 1, 0)],
        RUNNING_JOBS: [running, running],
        JOB_SLOTS: [slots, slots],
    }
    assert job_queue_policy(context(reports)) == (want, {})


def test_without_reports_the_target_stays() -> None:
    assert job_queue_policy(context({}, target=3)) == (3, {})
    assert job_queue_policy(context({QUEUED_JOBS: [5, 5]}, target=2)) == (2, {})


def test_the_policy_reaches_serve_as_its_autoscaling_config() -> None:
    a = AutoscalingSettings(min_replicas=2, max_replicas=4, policy=JOB_QUEUE_POLICY)
    entry = ReplicaSettings(autoscaling=a, max_replicas_per_node=1).serve_entry("JobRunner", False)
    schema: Any = DeploymentSchema.model_validate(entry)
    config = AutoscalingConfig.model_validate(schema.autoscaling_config)
    assert config.policy.policy_function == JOB_QUEUE_POLICY
    assert ReplicaSettings.from_serve_entry(entry).autoscaling == a
    with pytest.raises(ValueError, match="policy"):
        AutoscalingSettings(policy="not a path")
