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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dfd.version import __version__
from pipeline.download import normalise_url
from pipeline.errors import DfdError
from pipeline.media import IMAGE_FORMATS, VIDEO_FORMATS, sniff_format
from pipeline.result import SCHEMA_VERSION
from serve.auth import KeyStore, RateLimiter
from serve.config import ServiceConfig
from serve.jobs import MEDIA_TYPES, job_prefix, source_artefact
from serve.jobstore import (
    CacheKey,
    Job,
    JobStatus,
    JobStore,
    Progress,
    new_job_id,
    url_source_key,
)
from serve.mever import mever_router
from serve.problems import ProblemError, install_problem_handlers, make_problem, problem_response
from serve.storage import ArtefactStorage, InvalidArtefactKeyError, validate_key
from serve.ui import mount_ui

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

log = logging.getLogger(__name__)

#: Multipart framing around an upload may add this much to ``max_upload_bytes``.
_MULTIPART_SLACK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# What the API talks to


class RunnerClient(Protocol):
    """The job runner as the ingress sees it (a deployment handle, or in-process)."""

    async def wake(self) -> None: ...

    async def describe(self) -> dict[str, Any]:
        """``cache_namespace``, ``models`` (member infos as dicts), ``warnings``, ..."""
        ...

    async def stats(self) -> dict[str, Any]: ...


class HandleRunnerClient:
    """:class:`RunnerClient` over the ``JobRunner`` deployment's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def wake(self) -> None:
        await self.handle.wake.remote()

    async def describe(self) -> dict[str, Any]:
        return await self.handle.describe.remote()

    async def stats(self) -> dict[str, Any]:
        return await self.handle.stats.remote()


@dataclass
class ApiContext:
    """Everything the routes use; :meth:`open` builds it from the configuration."""

    config: ServiceConfig
    store: JobStore
    storage: ArtefactStorage
    keys: KeyStore | None
    limiter: RateLimiter
    runner: RunnerClient

    @classmethod
    def open(cls, config: ServiceConfig, runner: RunnerClient) -> ApiContext:
        return cls(
            config=config,
            store=config.open_job_store(),
            storage=config.open_storage(),
            keys=config.open_key_store() if config.auth.mode == "keys" else None,
            limiter=config.open_rate_limiter(),
            runner=runner,
        )


@dataclass(frozen=True)
class Client:
    """Who is calling: ``owner`` is the API key id (``None`` when auth is off)."""

    owner: str | None
    address: str


# ---------------------------------------------------------------------------------------------
# Schemas (for /docs and for validation)


class JobRequest(BaseModel):
    """``POST /v1/jobs`` as JSON."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=8192, description="http(s) link to an image or video")
    force: bool = Field(False, description="analyse again even if a cached result exists")


class JobCreated(BaseModel):
    id: str
    url: str = Field(description="absolute URL of the job")
    status: JobStatus
    cached: bool = Field(description="answered from the cache: no analysis runs")


class JobView(BaseModel):
    id: str
    status: JobStatus
    progress: Progress
    error: dict[str, Any] | None = Field(None, description="problem+json when failed")
    source_url: str | None = None
    filename: str | None = None
    cached: bool = False
    attempts: int
    created_at: datetime
    updated_at: datetime
    url: str
    result_url: str | None = None


def _base_url(config: ServiceConfig, request: Request) -> str:
    return (config.public_base_url or str(request.base_url)).rstrip("/")


def resolve_artefacts(result: dict[str, Any], url_for: Callable[[str], str]) -> dict[str, Any]:
    """The result document with every artefact path (galleries, thumbnails, collages,
    keyframes, crops) replaced by ``url_for(path)``; modifies and returns ``result``."""

    def fix(obj: dict[str, Any], *names: str) -> None:
        for name in names:
            if obj.get(name):
                obj[name] = url_for(obj[name])

    for shot in result.get("shots", []):
        fix(shot, "gallery", "thumbnail")
        for cluster in shot.get("clusters", []):
            fix(cluster, "collage", "keyframe")
            for face in cluster.get("faces", []):
                fix(face, "crop")
    return result


# ---------------------------------------------------------------------------------------------
# Jobs: the logic shared by /v1 and the MeVer routes


@dataclass
class _Upload:
    path: Path
    filename: str
    media_format: str
    sha256: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)


def _clean_filename(name: str | None) -> str:
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable())[:200].strip()
    return base or "upload"


class JobsService:
    """Submitting, reading and removing jobs; the routes are thin over this."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._namespace: str | None = None
        self.submitted = Counter(
            "dfd_jobs_submitted",
            "Jobs submitted, by API and whether the cache answered",
            ["api", "cached"],
            registry=None,
        )

    async def namespace(self) -> str:
        """The cache namespace the runner computed from its models (asked once)."""
        if self._namespace is None:
            try:
                info = await asyncio.wait_for(self.ctx.runner.describe(), timeout=10)
            except Exception as exc:
                raise ProblemError.of(
                    "overloaded",
                    "The analysis models are still loading; retry in a few seconds.",
                    headers={"Retry-After": "5"},
                ) from exc
            self._namespace = str(info["cache_namespace"])
        return self._namespace

    def _check_capacity(self) -> None:
        limit = self.ctx.config.jobs.max_queued_jobs
        if self.ctx.store.count(JobStatus.QUEUED) >= limit:
            raise ProblemError.of(
                "overloaded",
                f"{limit} jobs are already waiting; retry later.",
                headers={"Retry-After": "30"},
            )

    async def _wake(self) -> None:
        try:
            await asyncio.wait_for(self.ctx.runner.wake(), timeout=5)
        except Exception:  # the runner also polls the queue: a lost wake-up only delays
            log.warning("could not wake the job runner", exc_info=True)

    def _cached(
        self,
        namespace: str,
        source_key: str,
        source: str,
        owner: str | None,
        options: dict[str, Any],
    ) -> Job | None:
        cached_id = self.ctx.store.cache_get(CacheKey(namespace, source_key))
        if cached_id is None:
            return None
        now = datetime.now(UTC)
        job = Job(
            id=new_job_id(),
            source=source,
            source_key=source_key,
            status=JobStatus.DONE,
            progress=Progress(stage="done", done=1, total=1),
            created_at=now,
            updated_at=now,
            owner=owner,
            options={**options, "cached_from": cached_id},
            result_key=cached_id,
        )
        return self.ctx.store.create(job)

    async def submit_url(
        self, url: str, *, owner: str | None, force: bool, options: dict[str, Any], api: str
    ) -> tuple[Job, bool]:
        """A job for ``url`` (normalised): the cached answer unless ``force``, else queued."""
        normalised = normalise_url(url)
        source_key = url_source_key(normalised)
        namespace = await self.namespace()

        def create() -> tuple[Job, bool]:
            if not force:
                hit = self._cached(namespace, source_key, normalised, owner, options)
                if hit is not None:
                    return hit, True
            self._check_capacity()
            job = Job.new(normalised, source_key, owner=owner, options=options)
            return self.ctx.store.create(job), False

        job, cached = await run_in_threadpool(create)
        self.submitted.labels(api=api, cached=str(cached).lower()).inc()
        if not cached:
            await self._wake()
        return job, cached

    async def submit_upload(
        self,
        request: Request,
        *,
        owner: str | None,
        force: bool,
        options: dict[str, Any],
        api: str,
        only_field: bool = False,
    ) -> tuple[Job, bool]:
        """A job for a multipart upload (field ``file``); ``force`` may also be a form field.
        ``only_field``: refuse any other field (the MeVer contract)."""
        namespace = await self.namespace()
        # Under overload, refuse before receiving the body (a cache hit is lost, time is not).
        await run_in_threadpool(self._check_capacity)
        upload = await self._receive(request, only_field=only_field)
        try:
            force = force or upload.fields.get("force", "").lower() in {"1", "true", "yes", "on"}
            source_key = f"sha256:{upload.sha256}"
            source = f"upload:{upload.filename}"

            def create() -> tuple[Job, bool]:
                if not force:
                    hit = self._cached(namespace, source_key, source, owner, options)
                    if hit is not None:
                        return hit, True
                self._check_capacity()
                job_id = new_job_id()
                key = job_prefix(job_id) + source_artefact(upload.media_format)
                self.ctx.storage.put_file(key, upload.path, MEDIA_TYPES[upload.media_format])
                job = Job.new(
                    source,
                    source_key,
                    owner=owner,
                    options={**options, "upload": key, "filename": upload.filename},
                    job_id=job_id,
                )
                return self.ctx.store.create(job), False

            job, cached = await run_in_threadpool(create)
        finally:
            upload.path.unlink(missing_ok=True)
        self.submitted.labels(api=api, cached=str(cached).lower()).inc()
        if not cached:
            await self._wake()
        return job, cached

    async def _receive(self, request: Request, *, only_field: bool) -> _Upload:
        limit = self.ctx.config.max_upload_bytes
        too_large = ProblemError.of(
            "too-large", f"uploads are limited to {limit / 1024**2:.0f} MiB"
        )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
            raise too_large
        received = 0

        async def receive() -> Any:
            # Count the body as it arrives: a client without Content-Length cannot fill the disk.
            nonlocal received
            message = await request.receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit + _MULTIPART_SLACK:
                    raise too_large
            return message

        form = await Request(request.scope, receive=receive).form(max_files=1, max_fields=8)
        try:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise ProblemError.of(
                    "invalid-input", "the multipart body needs a file in the field 'file'"
                )
            if only_field and (set(form.keys()) - {"file"}):
                raise ProblemError.of("invalid-input", "the multipart body may only hold 'file'")
            return await run_in_threadpool(self._spool, part, fields, limit)
        finally:
            await form.close()

    def _spool(self, part: UploadFile, fields: dict[str, str], limit: int) -> _Upload:
        digest = hashlib.sha256()
        size = 0
        head = b""
        tmp = tempfile.NamedTemporaryFile(prefix="dfd-upload-", delete=False)  # noqa: SIM115
        try:
            with tmp:
                part.file.seek(0)
                while chunk := part.file.read(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise ProblemError.of(
                            "too-large", f"uploads are limited to {limit / 1024**2:.0f} MiB"
                        )
                    if len(head) < 512:
                        head += chunk[: 512 - len(head)]
                    digest.update(chunk)
                    tmp.write(chunk)
            if size == 0:
                raise ProblemError.of("empty-media", "the uploaded file is empty")
            media_format = sniff_format(head)
            if media_format not in IMAGE_FORMATS and media_format not in VIDEO_FORMATS:
                what = f"'{media_format}'" if media_format else "an unknown format"
                raise ProblemError.of(
                    "unsupported-media",
                    f"the upload is {what}; send an image (JPEG, PNG, WebP, BMP, GIF) or a video "
                    "(MP4, MOV, WebM, MKV, AVI, ...)",
                )
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
        return _Upload(
            Path(tmp.name),
            _clean_filename(part.filename),
            media_format,
            digest.hexdigest(),
            size,
            fields,
        )

    def get(self, job_id: str) -> Job:
        return self.ctx.store.get(job_id)

    def result(self, job: Job) -> dict[str, Any]:
        """The stored result document of a ``done`` job (parsed JSON)."""
        if job.status != JobStatus.DONE:
            detail = f"job {job.id} is {job.status}"
            if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                detail += f"; poll /v1/jobs/{job.id} until it is done"
            raise ProblemError.of("conflict", detail, status_of_job=str(job.status))
        raw = self.ctx.store.get_result(job.result_key or job.id)
        if raw is None:
            raise ProblemError.of(
                "not-found", f"the result of job {job.id} was deleted; submit the input again"
            )
        return json.loads(raw)

    def resolved_result(self, job: Job, url_for: Callable[[str], str]) -> dict[str, Any]:
        """:meth:`result` with artefact paths turned into ``url_for(path)``."""
        return resolve_artefacts(self.result(job), url_for)

    def artefact_response(self, request: Request, job: Job, path: str) -> Response:
        """An artefact of ``job`` with ``Range`` support (206 / 416), for GET and HEAD."""
        key = job_prefix(job.result_key or job.id) + path
        try:
            validate_key(key)
        except InvalidArtefactKeyError as exc:
            raise ProblemError.of("not-found", f"job {job.id} has no artefact {path!r}") from exc
        info = self.ctx.storage.stat(key)
        etag = '"' + hashlib.sha256(f"{key}:{info.size}".encode()).hexdigest()[:16] + '"'
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Cache-Control": "private, max-age=86400",
        }
        start, end = 0, info.size - 1
        status = 200
        requested = request.headers.get("range")
        if requested and request.headers.get("if-range", etag) == etag:
            match = _RANGE.match(requested.strip())
            # Multiple ranges or other units: RFC 9110 lets a server ignore Range.
            if match and match.group(1) + match.group(2):
                first, last = match.groups()
                if first == "":
                    start = max(0, info.size - int(last))
                else:
                    start = int(first)
                    end = min(int(last), info.size - 1) if last else info.size - 1
                if start >= info.size or start > end:
                    raise ProblemError.of(
                        "range-not-satisfiable",
                        f"the artefact has {info.size} bytes",
                        headers={"Content-Range": f"bytes */{info.size}"},
                    )
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
        headers["Content-Length"] = str(end - start + 1 if info.size else 0)
        if request.method == "HEAD" or info.size == 0:
            return Response(status_code=status, headers=headers, media_type=info.content_type)
        body: Iterator[bytes] = self.ctx.storage.iter_bytes(key, start, end)
        return StreamingResponse(
            body, status_code=status, headers=headers, media_type=info.content_type
        )

    def cancel(self, job: Job, client: Client) -> Job:
        self._check_owner(job, client)
        return self.ctx.store.update(
            job.id,
            status=JobStatus.CANCELLED,
            expect={JobStatus.QUEUED, JobStatus.RUNNING},
        )

    def delete(self, job: Job, client: Client) -> None:
        """Cancel if needed, then remove the job, its result and the artefacts it produced."""
        self._check_owner(job, client)
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            with contextlib.suppress(Exception):
                self.ctx.store.update(
                    job.id, status=JobStatus.CANCELLED, expect={JobStatus.QUEUED, JobStatus.RUNNING}
                )
        self.ctx.store.delete(job.id)
        # A cached job points at another job's artefacts: those stay with their own job.
        if job.result_key in (None, job.id):
            self.ctx.storage.delete_prefix(job_prefix(job.id))

    @staticmethod
    def _check_owner(job: Job, client: Client) -> None:
        if job.owner is not None and job.owner != client.owner:
            raise ProblemError.of("forbidden", f"job {job.id} belongs to another API key")


# ---------------------------------------------------------------------------------------------
# Access


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def authenticate(ctx: ApiContext, request: Request) -> Client:
    """The caller, or 401 (no valid key when keys are required) / 429 (over its rate)."""
    address = request.client.host if request.client else "unknown"
    auth = ctx.config.auth
    if auth.mode == "keys":
        assert ctx.keys is not None
        presented = _presented_key(request)
        record = ctx.keys.verify(presented) if presented else None
        if record is None:
            raise ProblemError.of(
                "unauthorized",
                "a valid API key is required: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": 'Bearer realm="dfd"'},
            )
        decision = ctx.limiter.hit(f"key:{record.key_id}", record.rate_per_min, burst=auth.burst)
        owner: str | None = record.key_id
    else:
        decision = ctx.limiter.hit(f"ip:{address}", auth.anonymous_rate_per_min, burst=auth.burst)
        owner = None
    if not decision.allowed:
        raise ProblemError.of(
            "rate-limited",
            f"over {decision.limit} requests per minute; retry in "
            f"{decision.headers()['Retry-After']} s",
            headers=decision.headers(),
        )
    return Client(owner, address)


def current_client(request: Request) -> Client:
    """FastAPI dependency: :func:`authenticate` against the app's context."""
    return authenticate(request.app.state.ctx, request)


Caller = Annotated[Client, Depends(current_client)]


# ---------------------------------------------------------------------------------------------
# The application


_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "force": {"type": "boolean"},
                    },
                }
            },
        },
    }
}


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes", "on"}


def create_api(ctx: ApiContext) -> FastAPI:
    """The FastAPI app of the service over ``ctx`` (no Ray needed: tests run it on uvicorn)."""
    app = FastAPI(
        title="DeepFake detection service",
        version=__version__,
        description="Asynchronous DeepFake analysis of images and videos (paper 3.3).",
        redirect_slashes=False,
    )
    install_problem_handlers(app)
    service = JobsService(ctx)
    registry = CollectorRegistry()
    registry.register(service.submitted)
    requests_total = Counter(
        "dfd_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "dfd_http_request_duration_seconds", "HTTP request latency", ["route"], registry=registry
    )
    jobs_gauge = Gauge("dfd_jobs", "Jobs in the store, by status", ["status"], registry=registry)
    runner_gauge = Gauge(
        "dfd_runner_jobs", "Runner counters since its start", ["outcome"], registry=registry
    )
    app.state.service = service
    app.state.ctx = ctx

    @app.middleware("http")
    async def _metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests_total.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - t0)
        return response

    def job_url(request: Request, job_id: str) -> str:
        return f"{_base_url(ctx.config, request)}/v1/jobs/{job_id}"

    def view(request: Request, job: Job) -> JobView:
        url = job_url(request, job.id)
        upload = job.source.startswith("upload:")
        return JobView(
            id=job.id,
            status=job.status,
            progress=job.progress,
            error=job.error,
            source_url=None if upload else job.source,
            filename=job.options.get("filename"),
            cached="cached_from" in job.options,
            attempts=job.attempts,
            created_at=job.created_at,
            updated_at=job.updated_at,
            url=url,
            result_url=f"{url}/result" if job.status == JobStatus.DONE else None,
        )

    # -- operations ------------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
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

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics of this ingress replica, the job store and the runner."""
        counts = await run_in_threadpool(lambda: {s: ctx.store.count(s) for s in JobStatus})
        for status, n in counts.items():
            jobs_gauge.labels(str(status)).set(n)
        with contextlib.suppress(Exception):
            stats = await asyncio.wait_for(ctx.runner.stats(), timeout=2)
            for outcome in ("claimed", "done", "failed", "stopped", "recovered"):
                runner_gauge.labels(outcome).set(stats.get(outcome, 0))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- v1 --------------------------------------------------------------------------------

    @app.get("/v1/version", tags=["service"])
    async def version(_: Caller) -> dict[str, Any]:
        """Service version (paper 5.3: x.y.z), result schema version and deployed models."""
        models = ensemble = None
        with contextlib.suppress(Exception):
            described = await asyncio.wait_for(ctx.runner.describe(), timeout=5)
            models, ensemble = described["models"], described.get("ensemble")
        return {
            "service_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "api_version": "v1",
            "ensemble": ensemble,
            "models": models,
        }

    @app.get("/v1/model-card", tags=["service"])
    async def model_card(_: Caller) -> dict[str, Any]:
        """The model card (paper 3.4; Mitchell et al.) from the manifest and the latest report.

        ``markdown`` holds the card; it says plainly when weights are untrained or figures are
        missing. If it cannot be rendered, ``status`` is ``placeholder`` and ``detail`` says why.
        """
        from evaluation.model_card import render_model_card

        info: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            info = await asyncio.wait_for(ctx.runner.describe(), timeout=5)
        base = {
            "service_version": __version__,
            "models": info.get("models"),
            "warnings": info.get("warnings", []),
        }
        report = ctx.config.model_card_report
        try:
            markdown = await asyncio.to_thread(
                render_model_card, ctx.config.analysis.inference.model_dir, report
            )
        except DfdError as exc:
            return {
                "status": "placeholder",
                "detail": f"This is a placeholder: the model card could not be rendered "
                f"({exc.detail}).",
                **base,
            }
        source = (
            f"the report in {report.name}" if report else "no evaluation report (figures missing)"
        )
        return {
            "status": "generated",
            "detail": f"Rendered from the model manifest and {source}.",
            **base,
            "markdown": markdown,
        }

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobCreated,
        tags=["jobs"],
        openapi_extra=_UPLOAD_DOC,
    )
    async def create_job(request: Request, who: Caller) -> Response:
        """Submit a URL (JSON) or a file (multipart, field ``file``): 202 with the job's id
        and URL at once. A cached result answers with a job that is already done."""
        force = _truthy(request.query_params.get("force"))
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/form-data"):
            job, cached = await service.submit_upload(
                request, owner=who.owner, force=force, options={}, api="v1"
            )
        elif ctype.startswith("application/json") or not ctype:
            try:
                body = JobRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                errors = [
                    {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors()
                ]
                raise ProblemError.of(
                    "invalid-input", 'send JSON {"url": "https://..."}', errors=errors
                ) from exc
            job, cached = await service.submit_url(
                body.url, owner=who.owner, force=force or body.force, options={}, api="v1"
            )
        else:
            raise ProblemError.of(
                "invalid-input",
                'send JSON {"url": ...} or a multipart/form-data upload with a field "file"',
            )
        url = job_url(request, job.id)
        created = JobCreated(id=job.id, url=url, status=job.status, cached=cached)
        return JSONResponse(
            created.model_dump(mode="json"), status_code=202, headers={"Location": url}
        )

    @app.get("/v1/jobs", response_model=list[JobView], tags=["jobs"])
    def list_jobs(
        request: Request, who: Caller, status: JobStatus | None = None, limit: int = 50
    ) -> list[JobView]:
        """The caller's jobs, newest first (all jobs when auth is off)."""
        if not 1 <= limit <= 1000:
            raise ProblemError.of("invalid-input", "limit must be in 1..1000")
        jobs = ctx.store.list_jobs(status=status, owner=who.owner, limit=limit)
        return [view(request, j) for j in jobs]

    @app.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    def get_job(request: Request, job_id: str, _: Caller) -> JobView:
        """Status (queued, running, done, failed, cancelled), progress and error."""
        return view(request, service.get(job_id))

    @app.get("/v1/jobs/{job_id}/result", tags=["jobs"])
    def get_result(request: Request, job_id: str, _: Caller) -> dict[str, Any]:
        """The pipeline's result (schema ``pipeline.result.Result``) with absolute artefact
        URLs; 409 while the job is not done."""
        job = service.get(job_id)
        base = f"{job_url(request, job.id)}/artefacts/"
        return service.resolved_result(job, lambda p: base + p)

    @app.api_route(
        "/v1/jobs/{job_id}/artefacts/{path:path}", methods=["GET", "HEAD"], tags=["jobs"]
    )
    def get_artefact(request: Request, job_id: str, path: str, _: Caller) -> Response:
        """A gallery, crop, keyframe or the analysed medium (``source.<format>``), with
        ``Range`` support."""
        return service.artefact_response(request, service.get(job_id), path)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobView, tags=["jobs"])
    def cancel_job(request: Request, job_id: str, who: Caller) -> JobView:
        """Stop a queued or running job (409 if it already ended); it stays listed."""
        return view(request, service.cancel(service.get(job_id), who))

    @app.delete("/v1/jobs/{job_id}", status_code=204, tags=["jobs"])
    def delete_job(job_id: str, who: Caller) -> Response:
        """Cancel if needed, then delete the job, its result and its artefacts."""
        service.delete(service.get(job_id), who)
        return Response(status_code=204)

    if ctx.config.mever.enabled:
        app.include_router(
            mever_router(ctx, service), prefix=ctx.config.mever.base_path.rstrip("/")
        )
    mount_ui(app)
    return app
