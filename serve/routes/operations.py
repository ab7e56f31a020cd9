"""Operations: liveness, readiness and Prometheus metrics (``/healthz``, ``/readyz``,
``/metrics``), and the middleware that counts and times every request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from starlette.concurrency import run_in_threadpool

from serve.context import ApiContext
from serve.jobstore import JobStatus
from serve.metrics import ServiceMetrics
from serve.problems import make_problem, problem_response
from serve.routes.access import Caller

__all__ = ["install_request_metrics", "operations_router"]

log = logging.getLogger(__name__)


def install_request_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Count ``app``'s requests by method, route and status, and time them by route
    (seconds)."""
    requests_total = metrics["dfd_http_requests"]
    latency = metrics["dfd_http_request_duration_seconds"]

    @app.middleware("http")
    async def _metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests_total.inc(method=request.method, route=route, status=str(response.status_code))
        latency.observe(time.perf_counter() - t0, route=route)
        return response


def operations_router(ctx: ApiContext, registry: CollectorRegistry) -> APIRouter:
    """The operations routes; ``/metrics`` serves ``registry`` with the job store's counts by
    status and the runner's counters added."""
    jobs_gauge = Gauge("dfd_jobs", "Jobs in the store, by status", ["status"], registry=registry)
    runner_gauge = Gauge(
        "dfd_runner_jobs", "Runner counters since its start", ["outcome"], registry=registry
    )
    router = APIRouter()

    @router.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @router.get("/readyz", tags=["operations"])
    async def readyz() -> Response:
        """Readiness: the job store answers and the runner has its models."""
        try:
            await run_in_threadpool(ctx.store.count)
            info = await asyncio.wait_for(ctx.runner.describe(), timeout=5)
        except Exception as exc:
            log.warning("not ready: %s", exc)
            return problem_response(
                make_problem("overloaded", "the service is starting or a backend is down"),
                {"Retry-After": "5"},
            )
        return JSONResponse({"status": "ready", "models": len(info.get("models", []))})

    @router.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"description": "Prometheus text format",
                         "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )  # fmt: skip
    async def metrics(_caller: Caller) -> Response:
        """Prometheus metrics of this ingress replica, the job store and the runner; with
        ``auth.mode: keys`` a scraper needs a key like any client."""
        counts = await run_in_threadpool(lambda: {s: ctx.store.count(s) for s in JobStatus})
        for status, n in counts.items():
            jobs_gauge.labels(str(status)).set(n)
        with contextlib.suppress(Exception):
            stats = await asyncio.wait_for(ctx.runner.stats(), timeout=2)
            for outcome in ("claimed", "done", "failed", "stopped", "recovered"):
                runner_gauge.labels(outcome).set(stats.get(outcome, 0))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
