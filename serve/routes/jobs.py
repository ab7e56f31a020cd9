"""``/v1/jobs``: submit a URL or an upload, follow the job, read its result and artefacts,
cancel or delete it (the routes are thin over :class:`~serve.jobs_service.JobsService`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from serve.context import ApiContext, Client
from serve.jobs import MEDIA_TYPES
from serve.jobs_service import JobsService, truthy
from serve.jobstore import Job, JobStatus, Progress
from serve.problems import ProblemError
from serve.routes.access import Caller

__all__ = [
    "JobCreated",
    "JobRequest",
    "JobView",
    "UploadCreated",
    "UploadRequest",
    "document_upload_limit",
    "job_url",
    "job_view",
    "jobs_router",
]


# ---------------------------------------------------------------------------------------------
# Schemas (for /docs and for validation)


class JobRequest(BaseModel):
    """``POST /v1/jobs`` as JSON: a URL, or the id of a direct upload (``POST /v1/uploads``)
    whose file has been put in the bucket."""

    # Exactly one of the two (the schema's oneOf); neither is ever null.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["url"]}, {"required": ["upload"]}]},
    )

    url: str | SkipJsonSchema[None] = Field(
        None, min_length=1, max_length=8192, description="http(s) link to an image or video"
    )
    upload: str | SkipJsonSchema[None] = Field(
        None, min_length=1, max_length=64, description="id of a direct upload (POST /v1/uploads)"
    )
    force: bool = Field(False, description="analyse again even if a cached result exists")

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        if (self.url is None) == (self.upload is None):
            raise ValueError("give either url or upload")
        return self


class UploadRequest(BaseModel):
    """``POST /v1/uploads``: a direct upload of a large file to the bucket."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field("upload", min_length=1, max_length=1000)
    size: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = Field(
        None, description="bytes, if known: refused at once beyond the upload limit"
    )


class UploadCreated(BaseModel):
    id: str = Field(description='submit the job with {"upload": id} once the file is PUT')
    put_url: str = Field(description="presigned URL: PUT the file's bytes here")
    expires_in_s: int
    max_bytes: int = Field(description="larger files are refused when the job is submitted")


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


UPLOAD_DOC = {
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


#: What the artefact route answers: gallery images, crops and the analysed medium (any of
#: the formats an upload may have), whole or a range, or a redirect to the bucket.
ARTEFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the artefact",
        "content": {
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in sorted({*MEDIA_TYPES.values(), "application/octet-stream"})
        },
    },
    206: {"description": "the requested byte range (Range)"},
    307: {"description": "S3 with a public endpoint: fetch it from the presigned Location"},
}


def document_upload_limit(app: FastAPI, limit: int) -> None:
    """State this deployment's upload limit as ``UploadRequest.size``'s maximum in ``app``'s
    OpenAPI document (the limit is configuration, not code)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        schema = base()
        size = schema["components"]["schemas"]["UploadRequest"]["properties"]["size"]
        size["maximum"] = limit
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def job_url(ctx: ApiContext, request: Request, job_id: str) -> str:
    """The job's absolute URL."""
    return f"{ctx.base_url(request)}/v1/jobs/{job_id}"


def job_view(ctx: ApiContext, request: Request, job: Job) -> JobView:
    """What a client sees of ``job``, with its URL and, once done, its result's URL."""
    url = job_url(ctx, request, job.id)
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


async def _submit(service: JobsService, request: Request, who: Client) -> tuple[Job, bool]:
    """A job for the request's URL (JSON body) or upload (multipart), and whether the cache
    answered it; ``force`` may also be a query parameter."""
    force = truthy(request.query_params.get("force"))
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
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
            ]
            raise ProblemError.of(
                "invalid-input", 'send JSON {"url": "https://..."}', errors=errors
            ) from exc
        if body.upload is not None:
            job, cached = await service.submit_direct_upload(
                body.upload, owner=who.owner, force=force or body.force, options={}, api="v1"
            )
        else:
            assert body.url is not None
            job, cached = await service.submit_url(
                body.url, owner=who.owner, force=force or body.force, options={}, api="v1"
            )
    else:
        raise ProblemError.of(
            "invalid-input",
            'send JSON {"url": ...} or a multipart/form-data upload with a field "file"',
        )
    return job, cached


def jobs_router(ctx: ApiContext, service: JobsService) -> APIRouter:
    """The ``/v1/jobs`` routes over ``service``."""
    router = APIRouter()

    @router.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobCreated,
        tags=["jobs"],
        openapi_extra=UPLOAD_DOC,
    )
    async def create_job(request: Request, who: Caller) -> Response:
        """Submit a URL (JSON) or a file (multipart, field ``file``): 202 with the job's id
        and URL at once. A cached result answers with a job that is already done."""
        job, cached = await _submit(service, request, who)
        url = job_url(ctx, request, job.id)
        created = JobCreated(id=job.id, url=url, status=job.status, cached=cached)
        return JSONResponse(
            created.model_dump(mode="json"), status_code=202, headers={"Location": url}
        )

    @router.post("/v1/uploads", status_code=201, response_model=UploadCreated, tags=["jobs"])
    async def create_upload(body: UploadRequest, who: Caller) -> UploadCreated:
        """A direct upload for a large file (S3 storage with a public endpoint only; 404
        otherwise): PUT the file to ``put_url`` (straight to the bucket, not through the
        service), then submit ``{"upload": id}`` to ``POST /v1/jobs``."""

        upload_id, url, expires_s = await run_in_threadpool(
            service.open_direct_upload, who.owner, body.filename, body.size
        )
        return UploadCreated(
            id=upload_id, put_url=url, expires_in_s=expires_s,
            max_bytes=ctx.config.max_upload_bytes,
        )  # fmt: skip

    @router.get("/v1/jobs", response_model=list[JobView], tags=["jobs"])
    def list_jobs(
        request: Request,
        who: Caller,
        status: JobStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[JobView]:
        """The caller's jobs, newest first (all jobs when auth is off)."""
        jobs = ctx.store.list_jobs(status=status, owner=who.owner, limit=limit)
        return [job_view(ctx, request, j) for j in jobs]

    @router.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    def get_job(request: Request, job_id: str, _: Caller) -> JobView:
        """Status (queued, running, done, failed, cancelled), progress and error."""
        return job_view(ctx, request, service.get(job_id))

    @router.get("/v1/jobs/{job_id}/result", tags=["jobs"])
    def get_result(request: Request, job_id: str, _: Caller) -> dict[str, Any]:
        """The pipeline's result (schema ``pipeline.result.Result``) with absolute artefact
        URLs; 409 while the job is not done."""
        job = service.get(job_id)
        base = f"{job_url(ctx, request, job.id)}/artefacts/"
        return service.resolved_result(job, lambda p: base + p)

    def get_artefact(request: Request, job_id: str, path: str, _: Caller) -> Response:
        """A gallery, crop, keyframe or the analysed medium (``source.<format>``), with
        ``Range`` support."""
        return service.artefact_response(request, service.get(job_id), path)

    for method in ("GET", "HEAD"):  # one operation id each (OpenAPI wants them unique)
        router.add_api_route(
            "/v1/jobs/{job_id}/artefacts/{path:path}",
            get_artefact,
            methods=[method],
            operation_id=f"{method.lower()}_artefact",
            tags=["jobs"],
            response_class=Response,
            responses=ARTEFACT_RESPONSES,
        )

    @router.post("/v1/jobs/{job_id}/cancel", response_model=JobView, tags=["jobs"])
    def cancel_job(request: Request, job_id: str, who: Caller) -> JobView:
        """Stop a queued or running job (409 if it already ended); it stays listed."""
        return job_view(ctx, request, service.cancel(service.get(job_id), who))

    @router.delete("/v1/jobs/{job_id}", status_code=204, tags=["jobs"])
    def delete_job(job_id: str, who: Caller) -> Response:
        """Cancel if needed, then delete the job, its result and its artefacts."""
        service.delete(service.get(job_id), who)
        return Response(status_code=204)

    return router
