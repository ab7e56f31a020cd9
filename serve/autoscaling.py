"""Serve autoscaling of the job runner on the job queue, not on requests.

The runner is not called per job: it claims jobs from the store, so Serve's default policy
(ongoing requests per replica) never sees the load. Each runner replica reports the store's
queued and running jobs and its own job slots (``JobRunnerDeployment.record_autoscaling_stats``);
:func:`job_queue_policy` asks for enough replicas to give every job a slot. Serve applies the
deployment's ``min_replicas``/``max_replicas`` and up/downscale delays around it.

Serve pickles this module by value into its controller: it imports nothing of the project.
"""

from __future__ import annotations

import math
from typing import Any

#: The metrics each runner replica reports (names shared with ``serve.deployments``).
QUEUED_JOBS = "queued_jobs"
RUNNING_JOBS = "running_jobs"
JOB_SLOTS = "job_slots"

#: The policy's import path, for ``autoscaling.policy`` of the runner's settings.
JOB_QUEUE_POLICY = "serve.autoscaling:job_queue_policy"


def job_queue_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Replicas for the jobs waiting and running: ``ceil((queued + running) / slots)``.

    ``ctx`` is Serve's ``AutoscalingContext``. Queued and running jobs are counts of the whole
    store, reported alike by every replica (the largest report counts); slots are one
    replica's ``jobs.concurrency``. Without reports yet, the target stays where it is.
    """
    metrics = ctx.aggregated_metrics or {}
    reports = [metrics.get(name) or {} for name in (QUEUED_JOBS, RUNNING_JOBS, JOB_SLOTS)]
    if not all(reports):
        return ctx.target_num_replicas, {}
    queued, running, slots = (max(r.values()) for r in reports)
    if slots <= 0:
        return ctx.target_num_replicas, {}
    return math.ceil((queued + running) / slots), {}
