"""The embedded job store: :class:`SQLiteJobStore`, one SQLite file in WAL mode.

WAL, a busy timeout and one connection per call make one instance safe across threads and let
several processes share the file. :func:`sqlite_connect` and :func:`sqlite_enable_wal` open
connections the same way for other SQLite state (the API key store, :mod:`serve.auth`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from serve.jobstore import base
from serve.jobstore.base import CacheKey, Job, JobStatus, JobStore
from serve.storage import private_dir

__all__ = ["SQLiteJobStore", "sqlite_connect", "sqlite_enable_wal"]


def sqlite_connect(path: str | Path, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit ``BEGIN``) that waits up to
    ``busy_timeout_s`` seconds for another writer instead of failing with "database is locked"."""
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    # NORMAL is durable under WAL except for the last transactions on power loss, not on crash.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def sqlite_create_private(path: str | Path) -> None:
    """Create the database file readable by its owner only (0600: it holds jobs and key
    hashes), in a folder created 0700; SQLite gives its ``-wal`` and ``-shm`` files the
    database's mode. An existing file keeps its mode."""
    path = Path(path)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.fchmod(fd, 0o600)
    os.close(fd)


def sqlite_enable_wal(path: str | Path, busy_timeout_s: float = 10.0) -> None:
    """Create the database file if needed (:func:`sqlite_create_private`) and switch it to WAL
    (persistent): readers never block the one writer."""
    sqlite_create_private(path)
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
                raise base.already_exists(job.id) from exc
        return job

    def get(self, job_id: str) -> Job:
        base.check_job_id(job_id)
        with self._read() as conn:
            row = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise base.not_found(job_id)
        return Job.model_validate_json(row[0])

    def _mutate(self, job_id: str, fn: Callable[[Job], Job]) -> Job:
        base.check_job_id(job_id)
        with self._write() as conn:
            row = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise base.not_found(job_id)
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
            rows = conn.execute(sql, (*args, base.check_list_limit(limit))).fetchall()
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
        if not base.is_job_id(job_id):
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
            job = base.claimed(Job.model_validate_json(row[0]), now)
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
        base.check_job_id(job_id)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise base.not_found(job_id)
            conn.execute(
                "INSERT OR REPLACE INTO job_results (job_id, data) VALUES (?, ?)",
                (job_id, result_json),
            )

    def get_result(self, job_id: str) -> str | None:
        if not base.is_job_id(job_id):
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
