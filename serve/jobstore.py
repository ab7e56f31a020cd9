"""Jobs, their results and the result cache, behind one interface with two backends.

A job is one analysis request (paper section 3.3): the controller creates it ``queued`` and
answers with its id at once; a worker claims it (``running``), reports progress, then stores the
result and marks it ``done`` (or ``failed`` with a problem+json error). ``done``, ``failed`` and
``cancelled`` are final: any later update raises :class:`JobConflictError`, which is also how a
worker learns that its job was cancelled.

The cache maps ``(service_version, source_key)`` to the id of a stored result, so an identical
input under the same service version is answered without recomputation.

Backends: :class:`SQLiteJobStore` (embedded default; WAL, busy timeout, one connection per call,
so one instance is safe across threads and several processes may share the file) and
:class:`RedisJobStore` (cluster; optimistic ``WATCH``/``MULTI`` transactions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, NamedTuple, Self
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import DfdError, InvalidUrlError
from serve.problems import Problem, make_problem

__all__ = [
    "JOB_ID_PATTERN",
    "TERMINAL_STATUSES",
    "UNSET",
    "CacheKey",
    "Job",
    "JobConflictError",
    "JobKind",
    "JobNotFoundError",
    "JobStatus",
    "JobStore",
    "Progress",
    "RecoveryPolicy",
    "RecoveryReport",
    "RedisJobStore",
    "SQLiteJobStore",
    "file_source_key",
    "new_job_id",
    "sqlite_connect",
    "sqlite_enable_wal",
    "url_source_key",
]

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


def _check_id(job_id: str) -> None:
    # Ids arrive from URL paths: refuse anything that is not an id before it reaches a query/key.
    if not _JOB_ID_RE.fullmatch(job_id):
        raise JobNotFoundError(f"no job with id {job_id[:80]!r}")


def _apply_update(
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
            lambda job: _apply_update(
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
                return _apply_update(
                    job,
                    now,
                    status=JobStatus.QUEUED,
                    progress=Progress(stage="queued"),
                    error=None,
                    result_key=UNSET,
                    expect=None,
                )
            problem = make_problem("internal", reason, attempts=job.attempts)
            return _apply_update(
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


def _limit(limit: int) -> int:
    if not 1 <= limit <= _MAX_LIST:
        raise ValueError(f"limit must be in 1..{_MAX_LIST}, got {limit}")
    return limit


# ---------------------------------------------------------------------------------------------
# SQLite


def sqlite_connect(path: str | Path, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit ``BEGIN``) that waits up to
    ``busy_timeout_s`` seconds for another writer instead of failing with "database is locked"."""
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    # NORMAL is durable under WAL except for the last transactions on power loss, not on crash.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def sqlite_enable_wal(path: str | Path, busy_timeout_s: float = 10.0) -> None:
    """Switch the database file to WAL (persistent): readers never block the one writer."""
    conn = sqlite_connect(path, busy_timeout_s)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OSError(f"SQLite refused WAL mode for {path} (got {mode}); use a local disk")
    finally:
        conn.close()


_SQLITE_SCHEMA = """
-- seq orders jobs by insertion (both backends list and claim in the order jobs were created).
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    owner TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);
CREATE TABLE IF NOT EXISTS job_results (job_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS result_cache (
    key TEXT PRIMARY KEY,
    result_id TEXT NOT NULL,
    expires_ts REAL
);
"""


class SQLiteJobStore(JobStore):
    """Job store in one SQLite file (created with its folder on construction).

    One connection per call: an instance can be shared by threads, and processes that open the
    same path see one store (WAL + ``BEGIN IMMEDIATE`` + busy timeout serialise writers).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sqlite_enable_wal(self.path, busy_timeout_s)
        with self._read() as conn:
            # executescript commits any open transaction first, so the script carries its own.
            conn.executescript(f"BEGIN IMMEDIATE;\n{_SQLITE_SCHEMA}\nCOMMIT;")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite_connect(self.path, self._busy_timeout_s)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a read-modify-write cannot interleave with
        # another writer and fail at commit time with SQLITE_BUSY.
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def create(self, job: Job) -> Job:
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO jobs (id, status, owner, data) VALUES (?, ?, ?, ?)",
                    (job.id, str(job.status), job.owner, job.model_dump_json()),
                )
            except sqlite3.IntegrityError as exc:
                raise JobConflictError(f"a job with id {job.id} already exists") from exc
        return job

    def get(self, job_id: str) -> Job:
        _check_id(job_id)
        with self._read() as conn:
            row = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return Job.model_validate_json(row[0])

    def _mutate(self, job_id: str, fn: Callable[[Job], Job]) -> Job:
        _check_id(job_id)
        with self._write() as conn:
            row = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id}")
            job = fn(Job.model_validate_json(row[0]))
            conn.execute(
                "UPDATE jobs SET status = ?, owner = ?, data = ? WHERE id = ?",
                (str(job.status), job.owner, job.model_dump_json(), job_id),
            )
        return job

    def list_jobs(
        self, *, status: JobStatus | str | None = None, owner: str | None = None, limit: int = 50
    ) -> list[Job]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(str(JobStatus(status)))
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        sql = "SELECT data FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._read() as conn:
            rows = conn.execute(sql, (*args, _limit(limit))).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]

    def count(self, status: JobStatus | str | None = None) -> int:
        with self._read() as conn:
            if status is None:
                row = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
            else:
                row = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = ?", (str(JobStatus(status)),)
                ).fetchone()
        return int(row[0])

    def delete(self, job_id: str) -> bool:
        try:
            _check_id(job_id)
        except JobNotFoundError:
            return False
        with self._write() as conn:
            gone = conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            conn.execute("DELETE FROM job_results WHERE job_id = ?", (job_id,))
        return gone > 0

    def claim_next(self) -> Job | None:
        now = self._now()
        with self._write() as conn:
            row = conn.execute(
                "SELECT data FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
                (str(JobStatus.QUEUED),),
            ).fetchone()
            if row is None:
                return None
            job = _apply_update(
                Job.model_validate_json(row[0]),
                now,
                status=JobStatus.RUNNING,
                progress=Progress(stage="starting"),
                error=UNSET,
                result_key=UNSET,
                expect=None,
            )
            conn.execute(
                "UPDATE jobs SET status = ?, data = ? WHERE id = ?",
                (str(job.status), job.model_dump_json(), job.id),
            )
        return job

    def _running_ids(self) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE status = ?", (str(JobStatus.RUNNING),)
            ).fetchall()
        return [r[0] for r in rows]

    def put_result(self, job_id: str, result_json: str) -> None:
        _check_id(job_id)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise JobNotFoundError(f"no job with id {job_id}")
            conn.execute(
                "INSERT OR REPLACE INTO job_results (job_id, data) VALUES (?, ?)",
                (job_id, result_json),
            )

    def get_result(self, job_id: str) -> str | None:
        try:
            _check_id(job_id)
        except JobNotFoundError:
            return None
        with self._read() as conn:
            row = conn.execute(
                "SELECT data FROM job_results WHERE job_id = ?", (job_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def cache_put(self, key: CacheKey, result_id: str, *, ttl_s: float | None = None) -> None:
        expires = None if ttl_s is None else self._clock() + ttl_s
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO result_cache (key, result_id, expires_ts) VALUES (?, ?, ?)",
                (key.digest(), result_id, expires),
            )

    def cache_get(self, key: CacheKey) -> str | None:
        digest = key.digest()
        with self._read() as conn:
            row = conn.execute(
                "SELECT c.result_id, c.expires_ts, r.job_id IS NOT NULL FROM result_cache c "
                "LEFT JOIN job_results r ON r.job_id = c.result_id WHERE c.key = ?",
                (digest,),
            ).fetchone()
        if row is None:
            return None
        result_id, expires_ts, has_result = row
        if has_result and (expires_ts is None or expires_ts > self._clock()):
            return str(result_id)
        with self._write() as conn:
            conn.execute(
                "DELETE FROM result_cache WHERE key = ? AND result_id = ?", (digest, result_id)
            )
        return None


# ---------------------------------------------------------------------------------------------
# Redis


class RedisJobStore(JobStore):
    """Job store in Redis under ``prefix``: each job a JSON string; sorted sets (all, per
    status, per owner) scored by an insertion counter, for listing and as the queue; results and
    cache entries as strings. Read-modify-writes are ``WATCH``/``MULTI`` transactions, retried on
    contention. Connects lazily: constructing it does no I/O.
    """

    _MAX_RETRIES = 1000

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "dfd:",
        clock: Callable[[], float] = time.time,
        client: redis.Redis | None = None,
    ) -> None:
        super().__init__(clock)
        self.prefix = prefix
        self._r: redis.Redis = client or redis.Redis.from_url(url, decode_responses=True)

    # key names
    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _result(self, job_id: str) -> str:
        return f"{self.prefix}result:{job_id}"

    def _all(self) -> str:
        return f"{self.prefix}jobs"

    def _by_status(self, status: JobStatus | str) -> str:
        return f"{self.prefix}status:{JobStatus(status)}"

    def _by_owner(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def _cache(self, key: CacheKey) -> str:
        return f"{self.prefix}cache:{key.digest()}"

    def _seq(self) -> str:
        return f"{self.prefix}seq"

    def _retrying(self) -> Iterator[None]:
        for _ in range(self._MAX_RETRIES):
            yield None
        raise JobConflictError("the job store is too busy; try again")

    def create(self, job: Job) -> Job:
        key = self._job(job.id)
        # Insertion order, as in SQLite: created_at alone ties under a coarse or injected clock.
        score = int(self._r.incr(self._seq()))
        with self._r.pipeline() as pipe:
            for _ in self._retrying():
                try:
                    pipe.watch(key)
                    if pipe.exists(key):
                        raise JobConflictError(f"a job with id {job.id} already exists")
                    pipe.multi()
                    pipe.set(key, job.model_dump_json())
                    pipe.zadd(self._all(), {job.id: score})
                    pipe.zadd(self._by_status(job.status), {job.id: score})
                    if job.owner is not None:
                        pipe.zadd(self._by_owner(job.owner), {job.id: score})
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue
        raise AssertionError("unreachable")

    def get(self, job_id: str) -> Job:
        _check_id(job_id)
        raw = self._r.get(self._job(job_id))
        if raw is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return Job.model_validate_json(raw)

    def _write_job(self, pipe: Any, old: Job, new: Job, score: float | None) -> None:
        """Queue the writes replacing ``old`` by ``new`` (call after ``pipe.multi()``); ``score``
        is the job's insertion number (read with ZSCORE while watching)."""
        pipe.set(self._job(new.id), new.model_dump_json())
        if old.status != new.status:
            pipe.zrem(self._by_status(old.status), new.id)
            pipe.zadd(self._by_status(new.status), {new.id: score or 0})

    def _mutate(self, job_id: str, fn: Callable[[Job], Job]) -> Job:
        _check_id(job_id)
        key = self._job(job_id)
        with self._r.pipeline() as pipe:
            for _ in self._retrying():
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise JobNotFoundError(f"no job with id {job_id}")
                    old = Job.model_validate_json(raw)
                    new = fn(old)
                    score = pipe.zscore(self._all(), job_id)
                    pipe.multi()
                    self._write_job(pipe, old, new, score)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue
        raise AssertionError("unreachable")

    def list_jobs(
        self, *, status: JobStatus | str | None = None, owner: str | None = None, limit: int = 50
    ) -> list[Job]:
        limit = _limit(limit)
        want = JobStatus(status) if status is not None else None
        if owner is not None:
            index = self._by_owner(owner)
        elif want is not None:
            index = self._by_status(want)
        else:
            index = self._all()
        out: list[Job] = []
        page = max(limit, 100)
        start = 0
        while len(out) < limit:
            ids = [str(i) for i in self._r.zrevrange(index, start, start + page - 1)]
            if not ids:
                break
            start += len(ids)
            for raw in self._r.mget([self._job(i) for i in ids]):
                if raw is None:  # deleted between the two reads
                    continue
                job = Job.model_validate_json(raw)
                if (want is None or job.status == want) and (owner is None or job.owner == owner):
                    out.append(job)
                    if len(out) == limit:
                        break
        return out

    def count(self, status: JobStatus | str | None = None) -> int:
        index = self._all() if status is None else self._by_status(status)
        return int(self._r.zcard(index))

    def delete(self, job_id: str) -> bool:
        try:
            _check_id(job_id)
        except JobNotFoundError:
            return False
        key = self._job(job_id)
        with self._r.pipeline() as pipe:
            for _ in self._retrying():
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        self._r.delete(self._result(job_id))
                        return False
                    job = Job.model_validate_json(raw)
                    pipe.multi()
                    pipe.delete(key, self._result(job_id))
                    pipe.zrem(self._all(), job_id)
                    pipe.zrem(self._by_status(job.status), job_id)
                    if job.owner is not None:
                        pipe.zrem(self._by_owner(job.owner), job_id)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
        raise AssertionError("unreachable")

    def claim_next(self) -> Job | None:
        queue = self._by_status(JobStatus.QUEUED)
        with self._r.pipeline() as pipe:
            for _ in self._retrying():
                try:
                    # Watching the queue itself makes concurrent claims of the head conflict.
                    pipe.watch(queue)
                    head = pipe.zrange(queue, 0, 0)
                    if not head:
                        pipe.unwatch()
                        return None
                    job_id = str(head[0])
                    pipe.watch(self._job(job_id))
                    raw = pipe.get(self._job(job_id))
                    if raw is None:  # index entry without a job: repair and look again
                        pipe.multi()
                        pipe.zrem(queue, job_id)
                        pipe.execute()
                        continue
                    old = Job.model_validate_json(raw)
                    if old.status != JobStatus.QUEUED:
                        # Claimed by another caller after our ZRANGE: the queue changed, so
                        # this EXEC fails and we look again. If the index is merely stale, the
                        # ZREM repairs it.
                        pipe.multi()
                        pipe.zrem(queue, job_id)
                        pipe.execute()
                        continue
                    score = pipe.zscore(self._all(), job_id)
                    new = _apply_update(
                        old,
                        self._now(),
                        status=JobStatus.RUNNING,
                        progress=Progress(stage="starting"),
                        error=UNSET,
                        result_key=UNSET,
                        expect=None,
                    )
                    pipe.multi()
                    self._write_job(pipe, old, new, score)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue
        raise AssertionError("unreachable")

    def _running_ids(self) -> list[str]:
        return [str(i) for i in self._r.zrange(self._by_status(JobStatus.RUNNING), 0, -1)]

    def put_result(self, job_id: str, result_json: str) -> None:
        _check_id(job_id)
        key = self._job(job_id)
        with self._r.pipeline() as pipe:
            for _ in self._retrying():
                try:
                    pipe.watch(key)
                    if not pipe.exists(key):
                        raise JobNotFoundError(f"no job with id {job_id}")
                    pipe.multi()
                    pipe.set(self._result(job_id), result_json)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def get_result(self, job_id: str) -> str | None:
        try:
            _check_id(job_id)
        except JobNotFoundError:
            return None
        raw = self._r.get(self._result(job_id))
        return None if raw is None else str(raw)

    def cache_put(self, key: CacheKey, result_id: str, *, ttl_s: float | None = None) -> None:
        # The expiry is also kept in the value and checked against this store's clock, so both
        # backends expire alike; Redis' own PX only reclaims the memory.
        expires = None if ttl_s is None else self._clock() + ttl_s
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        value = json.dumps({"result_id": result_id, "expires_ts": expires})
        self._r.set(self._cache(key), value, px=px)

    def cache_get(self, key: CacheKey) -> str | None:
        cache_key = self._cache(key)
        raw = self._r.get(cache_key)
        if raw is None:
            return None
        entry = json.loads(raw)
        result_id = str(entry["result_id"])
        expires_ts = entry.get("expires_ts")
        fresh = expires_ts is None or expires_ts > self._clock()
        if fresh and self._r.exists(self._result(result_id)):
            return result_id
        # Drop the stale entry, but only if nobody replaced it meanwhile; a lost race only
        # leaves the cleanup to the next reader.
        with self._r.pipeline() as pipe, suppress(redis.WatchError):
            pipe.watch(cache_key)
            if pipe.get(cache_key) == raw:
                pipe.multi()
                pipe.delete(cache_key)
                pipe.execute()
        return None

    def close(self) -> None:
        self._r.close()
