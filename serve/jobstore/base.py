"""The job store's interface: jobs, their states, the cache key and the abstract :class:`JobStore`.

A job is one analysis request (paper section 3.3): the controller creates it ``queued`` and
answers with its id at once; a worker claims it (``running``), reports progress, then stores the
result and marks it ``done`` (or ``failed`` with a problem+json error). ``done``, ``failed`` and
``cancelled`` are final: any later update raises :class:`JobConflictError`, which is also how a
worker learns that its job was cancelled.

The cache maps ``(service_version, source_key)`` to the id of a stored result, so an identical
input under the same service version is answered without recomputation.

:func:`apply_update` decides every job transition, :func:`check_job_id` and
:func:`check_list_limit` check arguments: the backends (:mod:`serve.jobstore.sqlite`,
:mod:`serve.jobstore.redis`) share them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, NamedTuple, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import DfdError, InvalidUrlError
from serve.problems import Problem, make_problem

_log = logging.getLogger(__name__)

#: Job ids appear in URLs and Redis keys: URL-safe characters only.
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_MAX_LIST = 1000


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}
)


class JobKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUTO = "auto"


class RecoveryPolicy(StrEnum):
    """What :meth:`JobStore.requeue_running` does with a job a dead process left ``running``."""

    REQUEUE = "requeue"  # back to ``queued`` while attempts < max_attempts, else ``failed``
    FAIL = "fail"  # ``failed`` at once


class JobNotFoundError(DfdError):
    kind = "not-found"
    title = "Job not found"


class JobConflictError(DfdError):
    kind = "conflict"
    title = "Job state conflict"


class _Unset(Enum):
    UNSET = "UNSET"


#: Marks an :meth:`JobStore.update` argument as "leave unchanged" (``None`` clears a field).
UNSET = _Unset.UNSET


class Progress(BaseModel):
    """Where a job is: ``stage`` name and ``done`` of ``total`` units (0/0 when unknown)."""

    model_config = ConfigDict(frozen=True)

    stage: str = "queued"
    done: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)


def new_job_id() -> str:
    """A fresh 16-character URL-safe id (96 random bits)."""
    return secrets.token_urlsafe(12)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Job(BaseModel):
    """One analysis request and its state. Timestamps are timezone-aware UTC.

    ``source`` is the URL or the stored upload's path; ``source_key`` identifies the content for
    the cache (:func:`url_source_key` or :func:`file_source_key`); ``error`` is a problem+json
    dict when ``failed``; ``attempts`` counts how often the job entered ``running``;
    ``result_key`` names the stored result (usually the job's own id, or a cached job's).
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=JOB_ID_PATTERN)
    kind: JobKind = JobKind.AUTO
    source: str = Field(min_length=1)
    source_key: str = Field(min_length=1)
    status: JobStatus = JobStatus.QUEUED
    progress: Progress = Progress()
    error: dict[str, Any] | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    attempts: int = Field(default=0, ge=0)
    owner: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    result_key: str | None = None

    @field_validator("created_at", "updated_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @classmethod
    def new(
        cls,
        source: str,
        source_key: str,
        *,
        kind: JobKind | str = JobKind.AUTO,
        owner: str | None = None,
        options: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        now: datetime | None = None,
    ) -> Job:
        """A new ``queued`` job with a fresh id (or ``job_id``) created ``now`` (default: now)."""
        now = now or datetime.now(UTC)
        return cls(
            id=new_job_id() if job_id is None else job_id,
            kind=JobKind(kind),
            source=source,
            source_key=source_key,
            created_at=now,
            updated_at=now,
            owner=owner,
            options=dict(options or {}),
        )


class CacheKey(NamedTuple):
    """A cache entry's key: same input under the same service version (paper 5.3 ``x.y.z``)."""

    service_version: str
    source_key: str

    def digest(self) -> str:
        """A fixed-length hex key; the source key may be a long URL."""
        raw = f"{self.service_version}\0{self.source_key}".encode()
        return hashlib.sha256(raw).hexdigest()


class RecoveryReport(BaseModel):
    """Ids of the jobs :meth:`JobStore.requeue_running` put back in the queue or failed."""

    requeued: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def url_source_key(url: str) -> str:
    """``"url:" + url`` normalised: scheme and host lower-cased, default port and fragment
    dropped, empty path as ``/``; the query is kept as sent (its order can matter to servers)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise InvalidUrlError(f"not an http(s) URL with a host: {url[:200]!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidUrlError(f"invalid port in URL: {url[:200]!r}") from exc
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    if parts.username is not None:
        userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "")
        host = f"{userinfo}@{host}"
    return "url:" + urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def file_source_key(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """``"sha256:" + hex digest`` of the file's bytes, read in ``chunk_bytes`` pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


_JOB_ID_RE = re.compile(JOB_ID_PATTERN)


def check_job_id(job_id: str) -> None:
    # Ids arrive from URL paths: refuse anything that is not an id before it reaches a query/key.
    if not is_job_id(job_id):
        raise JobNotFoundError(f"no job with id {job_id[:80]!r}")


def is_job_id(job_id: str) -> bool:
    """Whether ``job_id`` can name a job (lookups that answer "absent" check this first)."""
    return _JOB_ID_RE.fullmatch(job_id) is not None


def not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(f"no job with id {job_id}")


def already_exists(job_id: str) -> JobConflictError:
    return JobConflictError(f"a job with id {job_id} already exists")


def claimed(job: Job, now: datetime) -> Job:
    """A queued ``job`` taken by a runner: running, progress reset, error and result cleared."""
    return apply_update(
        job,
        now,
        status=JobStatus.RUNNING,
        progress=Progress(stage="starting"),
        error=UNSET,
        result_key=UNSET,
        expect=None,
    )


def apply_update(
    job: Job,
    now: datetime,
    *,
    status: JobStatus | None,
    progress: Progress | _Unset | None,
    error: Problem | Mapping[str, Any] | _Unset | None,
    result_key: str | _Unset | None,
    expect: Collection[JobStatus] | None,
) -> Job:
    """The one place job transitions are decided, shared by both backends."""
    if job.status in TERMINAL_STATUSES:
        raise JobConflictError(f"job {job.id} is already {job.status}; it cannot change any more")
    if expect is not None and job.status not in expect:
        wanted = ", ".join(sorted(str(s) for s in expect))
        raise JobConflictError(f"job {job.id} is {job.status}, expected one of: {wanted}")
    changes: dict[str, Any] = {"updated_at": now}
    if status is not None:
        changes["status"] = JobStatus(status)
        if changes["status"] == JobStatus.RUNNING and job.status != JobStatus.RUNNING:
            changes["attempts"] = job.attempts + 1
    if progress is not UNSET:
        changes["progress"] = progress if progress is not None else Progress()
    if error is not UNSET:
        changes["error"] = (
            error.to_dict()
            if isinstance(error, Problem)
            else (dict(error) if error is not None else None)
        )
    if result_key is not UNSET:
        changes["result_key"] = result_key
    # Validate the whole record again: model_copy alone would not.
    return Job.model_validate({**job.model_dump(), **changes})


class _Skip(Exception):
    """Raised inside a mutation to leave a job untouched (e.g. it stopped being stale)."""


class JobStore(ABC):
    """Jobs, results and the result cache. Every method is atomic on its own.

    ``clock`` returns the current time in seconds since the epoch (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def _now(self) -> datetime:
        return _utc(self._clock())

    # -- jobs ---------------------------------------------------------------------------------
    @abstractmethod
    def create(self, job: Job) -> Job:
        """Store a new job; :class:`JobConflictError` if its id exists."""

    @abstractmethod
    def get(self, job_id: str) -> Job:
        """The job; :class:`JobNotFoundError` if there is none."""

    @abstractmethod
    def _mutate(self, job_id: str, fn: Callable[[Job], Job]) -> Job:
        """Atomically replace the job with ``fn(job)`` and return it (``fn`` may raise)."""

    def update(
        self,
        job_id: str,
        *,
        status: JobStatus | str | None = None,
        progress: Progress | _Unset | None = UNSET,
        error: Problem | Mapping[str, Any] | _Unset | None = UNSET,
        result_key: str | _Unset | None = UNSET,
        expect: Collection[JobStatus | str] | None = None,
    ) -> Job:
        """Atomically change status, progress, error and/or result key; returns the new job.

        Entering ``running`` increments ``attempts``. ``expect`` makes it a compare-and-set: the
        current status must be one of them. Raises :class:`JobNotFoundError`, or
        :class:`JobConflictError` if the job is final (done/failed/cancelled) or not as expected.
        """
        new_status = JobStatus(status) if status is not None else None
        expected = frozenset(JobStatus(s) for s in expect) if expect is not None else None
        now = self._now()
        return self._mutate(
            job_id,
            lambda job: apply_update(
                job,
                now,
                status=new_status,
                progress=progress,
                error=error,
                result_key=result_key,
                expect=expected,
            ),
        )

    @abstractmethod
    def list_jobs(
        self, *, status: JobStatus | str | None = None, owner: str | None = None, limit: int = 50
    ) -> list[Job]:
        """Jobs newest first, optionally only one status and/or one owner; at most ``limit``
        (1..1000)."""

    @abstractmethod
    def count(self, status: JobStatus | str | None = None) -> int:
        """How many jobs (of ``status``) there are, e.g. to refuse work when the queue is full."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove the job and its stored result; ``False`` if there was none."""

    @abstractmethod
    def claim_next(self) -> Job | None:
        """Atomically move the oldest ``queued`` job to ``running`` (``attempts`` + 1) and return
        it; ``None`` when the queue is empty. Two callers never get the same job."""

    def requeue_running(
        self,
        reason: str,
        *,
        policy: RecoveryPolicy | str = RecoveryPolicy.REQUEUE,
        max_attempts: int = 3,
        stale_after_s: float | None = None,
    ) -> RecoveryReport:
        """Recover jobs left ``running`` by a process that died (call on start).

        With ``REQUEUE`` a job goes back to ``queued`` (progress reset) while ``attempts <
        max_attempts``, else it fails; with ``FAIL`` it fails at once. A failed job's error is an
        ``internal`` problem whose detail is ``reason``. With ``stale_after_s`` only jobs not
        updated for that many seconds are touched (progress updates act as heartbeats), so
        several controllers can share a store.
        """
        policy = RecoveryPolicy(policy)
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        report = RecoveryReport()
        now = self._now()
        cutoff = None if stale_after_s is None else _utc(self._clock() - stale_after_s)

        def recover(job: Job) -> Job:
            if job.status != JobStatus.RUNNING or (cutoff is not None and job.updated_at > cutoff):
                raise _Skip
            if policy == RecoveryPolicy.REQUEUE and job.attempts < max_attempts:
                return apply_update(
                    job,
                    now,
                    status=JobStatus.QUEUED,
                    progress=Progress(stage="queued"),
                    error=None,
                    result_key=UNSET,
                    expect=None,
                )
            problem = make_problem("internal", reason, attempts=job.attempts)
            return apply_update(
                job,
                now,
                status=JobStatus.FAILED,
                progress=UNSET,
                error=problem,
                result_key=UNSET,
                expect=None,
            )

        for job_id in self._running_ids():
            try:
                job = self._mutate(job_id, recover)
            except (_Skip, JobNotFoundError):
                continue
            (report.requeued if job.status == JobStatus.QUEUED else report.failed).append(job.id)
        if report.requeued or report.failed:
            _log.warning(
                "recovered jobs left running (%s): requeued %d, failed %d",
                reason,
                len(report.requeued),
                len(report.failed),
            )
        return report

    @abstractmethod
    def _running_ids(self) -> list[str]:
        """Ids of all jobs currently ``running``."""

    # -- results and cache --------------------------------------------------------------------
    @abstractmethod
    def put_result(self, job_id: str, result_json: str) -> None:
        """Store the job's result document (JSON text, not parsed here); replaces any previous
        one. :class:`JobNotFoundError` if the job does not exist."""

    @abstractmethod
    def get_result(self, job_id: str) -> str | None:
        """The stored result document, or ``None``."""

    @abstractmethod
    def cache_put(self, key: CacheKey, result_id: str, *, ttl_s: float | None = None) -> None:
        """Remember that ``key``'s result is stored under ``result_id`` (for ``ttl_s`` seconds,
        or until replaced)."""

    @abstractmethod
    def cache_get(self, key: CacheKey) -> str | None:
        """The result id cached for ``key``; ``None`` if absent, expired, or its result was
        deleted since (the stale entry is dropped)."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release connections (a no-op where there are none)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_list_limit(limit: int) -> int:
    """``limit`` if it is in 1..1000, else :class:`ValueError` (for :meth:`JobStore.list_jobs`)."""
    if not 1 <= limit <= _MAX_LIST:
        raise ValueError(f"limit must be in 1..{_MAX_LIST}, got {limit}")
    return limit
