"""The service's own metrics, recorded where they add up.

Each instrument records twice:

- in a Prometheus registry of this process, when one is given: what ``/metrics`` serves (the
  embedded default, where one ingress replica answers every request);
- inside a Ray Serve replica, through Serve's metrics API (:mod:`ray.serve.metrics`): the series
  carry the ``application``, ``deployment`` and ``replica`` tags and are exported by each node's
  metrics agent with Ray's ``ray_`` prefix (``ray_dfd_jobs_finished_total``), so that Prometheus
  scraping every node sees every replica of every deployment, and a sum over replicas is the
  service's figure. A per-replica ``/metrics`` behind a load balancer cannot give that: each
  scrape reaches one replica, and its counters seem to reset between scrapes.

``deploy/grafana/dfd-service.json`` is a dashboard over the Ray-exported series.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram

__all__ = [
    "METRICS",
    "Instrument",
    "RunnerMetrics",
    "ServiceMetrics",
    "in_serve_replica",
]

log = logging.getLogger(__name__)

#: Seconds buckets for request latency and pipeline stages (a request: ms; a stage: minutes).
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: Every metric the service defines: name -> (kind, description, tag keys). Names are as
#: Prometheus sees them from ``/metrics``; Ray exports them as ``ray_<name>`` (counters with
#: ``_total``).
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "dfd_http_requests": ("counter", "HTTP requests", ("method", "route", "status")),
    "dfd_http_request_duration_seconds": ("histogram", "HTTP request latency", ("route",)),
    "dfd_jobs_submitted": (
        "counter", "Jobs submitted, by API and whether the cache answered", ("api", "cached")
    ),
    "dfd_jobs_finished": (
        "counter", "Jobs a runner finished, by outcome (done, failed, stopped)", ("outcome",)
    ),
    "dfd_jobs_recovered": ("counter", "Stale jobs a runner requeued or failed", ()),
    "dfd_stage_seconds": (
        "histogram", "Seconds of each stage of a finished job (download, shots, faces, ...)",
        ("stage",),
    ),
    "dfd_faces_analysed": ("counter", "Faces scored by the ensemble in finished jobs", ()),
    "dfd_jobs_in_store": ("gauge", "Jobs in the store by status, as a runner last read it",
                          ("status",)),
}  # fmt: skip


def in_serve_replica() -> bool:
    """True inside a Ray Serve replica (where Serve's metrics API tags the series)."""
    try:
        from ray import serve

        serve.get_replica_context()
    except Exception:  # RayServeException outside a replica; ImportError without Serve
        return False
    return True


class Instrument:
    """One metric, recorded in a Prometheus registry and/or through Ray Serve."""

    def __init__(self, name: str, registry: CollectorRegistry | None, to_ray: bool) -> None:
        kind, description, tags = METRICS[name]
        self.name, self.kind, self.tags = name, kind, tags
        self._prom: Any = None
        self._ray: Any = None
        if registry is not None:
            cls = {"counter": PromCounter, "gauge": PromGauge, "histogram": PromHistogram}[kind]
            extra: dict[str, Any] = {"buckets": SECONDS_BUCKETS} if kind == "histogram" else {}
            self._prom = cls(name, description, list(tags), registry=registry, **extra)
        if to_ray:
            from ray.serve import metrics

            # Ray's annotations say tag_keys: tuple[str] (one key); any number is meant.
            serve_metrics: Any = metrics
            if kind == "counter":
                self._ray = serve_metrics.Counter(name, description, tag_keys=tags)
            elif kind == "gauge":
                self._ray = serve_metrics.Gauge(name, description, tag_keys=tags)
            else:
                self._ray = serve_metrics.Histogram(
                    name, description, boundaries=list(SECONDS_BUCKETS), tag_keys=tags
                )

    def _prom_child(self, tags: dict[str, str]) -> Any:
        return self._prom.labels(**tags) if self.tags else self._prom

    def inc(self, value: float = 1.0, **tags: str) -> None:
        if self._prom is not None:
            self._prom_child(tags).inc(value)
        if self._ray is not None and value > 0:
            self._ray.inc(value, tags=tags or None)

    def set(self, value: float, **tags: str) -> None:
        if self._prom is not None:
            self._prom_child(tags).set(value)
        if self._ray is not None:
            self._ray.set(value, tags=tags or None)

    def observe(self, value: float, **tags: str) -> None:
        if self._prom is not None:
            self._prom_child(tags).observe(value)
        if self._ray is not None:
            self._ray.observe(value, tags=tags or None)


class _Metrics:
    NAMES: Sequence[str] = ()

    def __init__(self, registry: CollectorRegistry | None = None, *, to_ray: bool | None = None):
        ray_on = in_serve_replica() if to_ray is None else to_ray
        self._instruments = {n: Instrument(n, registry, ray_on) for n in self.NAMES}

    def __getitem__(self, name: str) -> Instrument:
        return self._instruments[name]


class ServiceMetrics(_Metrics):
    """The ingress's metrics: requests, latency, submissions."""

    NAMES = ("dfd_http_requests", "dfd_http_request_duration_seconds", "dfd_jobs_submitted")


class RunnerMetrics(_Metrics):
    """A job runner's metrics: finished jobs, stage seconds, faces, the store's queue."""

    NAMES = (
        "dfd_jobs_finished",
        "dfd_jobs_recovered",
        "dfd_stage_seconds",
        "dfd_faces_analysed",
        "dfd_jobs_in_store",
    )
