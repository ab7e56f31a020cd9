"""Jobs as the HTTP API handles them: the logic shared by the ``/v1`` and the MeVer routes.

:class:`JobsService` submits (a URL, or an upload; answered from the cache unless forced),
reads, cancels and deletes jobs, and serves results and artefacts; the routes
(:mod:`serve.routes.jobs`, :mod:`serve.mever`) are thin over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from pipeline.download import normalise_url
from serve.config import S3StorageConfig
from serve.context import ApiContext, Client
from serve.jobs import MEDIA_TYPES, job_prefix, source_artefact
from serve.jobstore import CacheKey, Job, JobStatus, Progress, new_job_id, url_source_key
from serve.metrics import ServiceMetrics
from serve.problems import ProblemError
from serve.storage import ArtefactNotFoundError, InvalidArtefactKeyError, validate_key
from serve.uploads import clean_filename, media_format_of, receive_upload, too_large

__all__ = ["JobsService", "resolve_artefacts", "truthy"]

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def truthy(value: str | None) -> bool:
    """A boolean query parameter or form field (``force``): 1, true, yes or on."""
    return (value or "").lower() in {"1", "true", "yes", "on"}


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


class JobsService:
    """Submitting, reading and removing jobs; the routes are thin over this."""

    def __init__(self, ctx: ApiContext, metrics: ServiceMetrics | None = None) -> None:
        self.ctx = ctx
        self._namespace: str | None = None
        self._submissions = (metrics or ServiceMetrics())["dfd_jobs_submitted"]

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
        return await self._submitted(job, cached, api)

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
        upload = await receive_upload(
            request, limit=self.ctx.config.max_upload_bytes, only_field=only_field
        )
        try:
            received = _Received(
                source_key=f"sha256:{upload.sha256}",
                filename=upload.filename,
                media_format=upload.media_format,
                store=lambda key, ctype: self.ctx.storage.put_file(key, upload.path, ctype),
            )
            force = force or truthy(upload.fields.get("force"))
            job, cached = await run_in_threadpool(
                self._upload_job, namespace, received, owner, force, options
            )
        finally:
            upload.path.unlink(missing_ok=True)
        return await self._submitted(job, cached, api)

    # -- uploads straight to the bucket ------------------------------------------------------

    def open_direct_upload(
        self, owner: str | None, filename: str, size: int | None
    ) -> tuple[str, str, int]:
        """A new direct upload: its id, the presigned URL its file is ``PUT`` to and how many
        seconds that URL is valid. A job is then submitted for the id
        (:meth:`submit_direct_upload`). Not found where the storage cannot take uploads itself
        (a local folder, or S3 without a public endpoint)."""
        limit = self.ctx.config.max_upload_bytes
        if size is not None and size > limit:
            raise too_large(limit)
        upload_id = secrets.token_hex(16)
        key = _direct_upload_key(owner, upload_id)
        url = self.ctx.storage.upload_url(key)
        storage = self.ctx.config.storage
        if url is None or not isinstance(storage, S3StorageConfig):
            raise ProblemError.of(
                "not-found",
                "this deployment takes uploads only in the body of POST /v1/jobs (direct "
                "uploads need S3 storage with storage.public_endpoint_url)",
            )
        record = {"filename": clean_filename(filename), "created_at": datetime.now(UTC)}
        self.ctx.storage.put_bytes(
            key + ".json", json.dumps(record, default=str).encode(), "application/json"
        )
        return upload_id, url, storage.upload_expires_s

    async def submit_direct_upload(
        self,
        upload_id: str,
        *,
        owner: str | None,
        force: bool,
        options: dict[str, Any],
        api: str,
    ) -> tuple[Job, bool]:
        """A job for a direct upload whose file the client has put in the bucket: checked as a
        body upload is (size, format), hashed for the cache by streaming it from the bucket,
        then moved (a copy inside the bucket) to the job's source artefact."""
        namespace = await self.namespace()
        await run_in_threadpool(self._check_capacity)
        received = await run_in_threadpool(self._check_direct_upload, owner, upload_id)
        job, cached = await run_in_threadpool(
            self._upload_job, namespace, received, owner, force, options
        )
        if cached:  # the cache answered: the file is not needed
            key = _direct_upload_key(owner, upload_id)
            await run_in_threadpool(self.ctx.storage.delete_prefix, key)
        return await self._submitted(job, cached, api)

    def _check_direct_upload(self, owner: str | None, upload_id: str) -> _Received:
        storage = self.ctx.storage
        key = _direct_upload_key(owner, upload_id)
        try:
            record = json.loads(storage.get_bytes(key + ".json"))
        except ArtefactNotFoundError as exc:
            raise ProblemError.of(
                "not-found",
                f"no direct upload {upload_id!r} for this key (create one with POST /v1/uploads; "
                "a submitted upload cannot be submitted again)",
            ) from exc
        try:
            size = storage.stat(key).size
        except ArtefactNotFoundError as exc:
            raise ProblemError.of(
                "conflict", f"upload {upload_id} has no file yet: PUT it to the upload's put_url"
            ) from exc
        limit = self.ctx.config.max_upload_bytes
        digest, head = hashlib.sha256(), b""
        try:
            if size > limit:
                raise too_large(limit)
            for chunk in storage.iter_bytes(key, chunk_size=1 << 20) if size else ():
                head += chunk[: 512 - len(head)]
                digest.update(chunk)
            media_format = media_format_of(head, size)
        except ProblemError:
            storage.delete_prefix(key)  # the file and its record: the upload is spent
            raise

        def store(job_key: str, content_type: str) -> None:
            storage.move(key, job_key, content_type)
            storage.delete_prefix(key)

        return _Received(f"sha256:{digest.hexdigest()}", record["filename"], media_format, store)

    # -- both kinds of upload ----------------------------------------------------------------

    def _upload_job(
        self,
        namespace: str,
        received: _Received,
        owner: str | None,
        force: bool,
        options: dict[str, Any],
    ) -> tuple[Job, bool]:
        """The cached job for an upload unless ``force``, else a queued one whose medium
        ``received.store`` puts at the job's source artefact."""
        source = f"upload:{received.filename}"
        if not force:
            hit = self._cached(namespace, received.source_key, source, owner, options)
            if hit is not None:
                return hit, True
        self._check_capacity()
        job_id = new_job_id()
        key = job_prefix(job_id) + source_artefact(received.media_format)
        received.store(key, MEDIA_TYPES[received.media_format])
        job = Job.new(
            source,
            received.source_key,
            owner=owner,
            options={**options, "upload": key, "filename": received.filename},
            job_id=job_id,
        )
        return self.ctx.store.create(job), False

    async def _submitted(self, job: Job, cached: bool, api: str) -> tuple[Job, bool]:
        self._submissions.inc(api=api, cached=str(cached).lower())
        if not cached:
            await self._wake()
        return job, cached

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
        direct = self.ctx.storage.download_url(key) if request.method == "GET" else None
        if direct is not None:
            # Large bodies off the Serve proxy: the client fetches (Range included) from the
            # bucket. The redirect is cached less long than the URL stays valid.
            return RedirectResponse(
                direct, status_code=307, headers={"Cache-Control": "private, max-age=60"}
            )
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


@dataclass
class _Received:
    """An upload checked and hashed, before its job exists: ``store(key, content_type)`` puts
    its medium at the job's source artefact."""

    source_key: str
    filename: str
    media_format: str
    store: Callable[[str, str], None]


#: Direct uploads live under ``uploads/<owner digest>/``: an upload id is found only with the
#: key that opened it. The bucket should expire this prefix (a lifecycle rule) to drop uploads
#: that were opened but never submitted.
DIRECT_UPLOADS = "uploads/"


def _direct_upload_key(owner: str | None, upload_id: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
        raise ProblemError.of("not-found", f"no direct upload {upload_id[:64]!r}")
    who = hashlib.sha256((owner or "anonymous").encode()).hexdigest()[:16]
    return f"{DIRECT_UPLOADS}{who}/{upload_id}"
