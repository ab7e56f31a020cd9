"""The HTTP API (FastAPI): asynchronous jobs, results, artefacts, health and metrics.

Paper 3.3: a request gets a job id at once; the client follows the job, then reads the result.
Routes (OpenAPI at ``/docs``):

- ``POST /v1/jobs``: ``{"url": ..., "force": false}`` or a multipart upload (field ``file``;
  ``force`` as a query parameter or form field) -> 202 ``{id, url, status, cached}``;
- ``GET /v1/jobs`` (the caller's jobs), ``GET /v1/jobs/{id}`` (status, progress, error),
  ``GET /v1/jobs/{id}/result`` (the pipeline's result, artefact paths as absolute URLs),
  ``GET|HEAD /v1/jobs/{id}/artefacts/{path}`` (with HTTP ``Range``), ``POST
  /v1/jobs/{id}/cancel``, ``DELETE /v1/jobs/{id}``;
- ``GET /v1/version``, ``/v1/model-card``, ``/healthz``, ``/readyz``, ``/metrics``.

Job ids are unguessable (96 random bits) and work as capabilities: any valid key may read a job
by id (a cached answer hands one client the result another client's job computed), but only the
job's owner may cancel or delete it. A cache hit creates a new job that is ``done`` at once and
points at the stored result (``cached: true``, ``attempts: 0``): no analysis runs.

Every error is ``application/problem+json`` (:mod:`serve.problems`).

Layout: :func:`create_api` assembles the app from the routers in :mod:`serve.routes` (one per
resource) and :mod:`serve.mever`; they are thin over :class:`~serve.jobs_service.JobsService`
(:mod:`serve.uploads` receives uploads), with what they talk to in :mod:`serve.context`.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from pipeline.version import __version__
from serve.context import ApiContext, Client, HandleRunnerClient, RunnerClient
from serve.jobs_service import JobsService, resolve_artefacts
from serve.metrics import ServiceMetrics
from serve.mever import mever_router
from serve.problems import document_problems, install_problem_handlers
from serve.routes.about import about_router
from serve.routes.jobs import JobCreated, JobView, document_upload_limit, jobs_router
from serve.routes.operations import install_request_metrics, operations_router
from serve.ui import mount_docs, mount_ui
from serve.uploads import Admission, BodyLimit

__all__ = [
    "ApiContext",
    "Client",
    "HandleRunnerClient",
    "JobCreated",
    "JobView",
    "JobsService",
    "RunnerClient",
    "create_api",
    "resolve_artefacts",
]


def create_api(ctx: ApiContext) -> FastAPI:
    """The FastAPI app of the service over ``ctx`` (no Ray needed: tests run it on uvicorn)."""
    app = FastAPI(
        title="DeepFake detection service",
        version=__version__,
        description="Asynchronous DeepFake analysis of images and videos (paper 3.3).",
        redirect_slashes=False,
        docs_url=None,  # served below from local files, not from a CDN
        redoc_url=None,
    )
    install_problem_handlers(app)
    document_problems(app)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    service = JobsService(ctx, metrics)
    install_request_metrics(app, metrics)
    app.state.service = service
    app.state.ctx = ctx
    app.include_router(operations_router(ctx, registry))
    app.include_router(about_router(ctx))
    app.include_router(jobs_router(ctx, service))
    document_upload_limit(app, ctx.config.max_upload_bytes)
    if ctx.config.mever.enabled:
        app.include_router(
            mever_router(ctx, service), prefix=ctx.config.mever.base_path.rstrip("/")
        )
    mount_ui(app)
    mount_docs(app)
    app.add_middleware(BodyLimit, upload_limit=ctx.config.max_upload_bytes)
    app.add_middleware(Admission, limit=ctx.config.max_concurrent_requests)  # outermost
    return app
