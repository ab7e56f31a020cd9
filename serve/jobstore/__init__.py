"""Jobs, their results and the result cache, behind one interface with two backends.

- :mod:`serve.jobstore.base`: jobs and their states (paper section 3.3), the cache key, the
  source keys, and the abstract :class:`JobStore`;
- :mod:`serve.jobstore.sqlite`: :class:`SQLiteJobStore` (embedded default; WAL, busy timeout,
  one connection per call, so one instance is safe across threads and several processes may
  share the file);
- :mod:`serve.jobstore.redis`: :class:`RedisJobStore` (cluster; optimistic ``WATCH``/``MULTI``
  transactions).
"""

from serve.jobstore.base import (
    JOB_ID_PATTERN,
    TERMINAL_STATUSES,
    UNSET,
    CacheKey,
    Job,
    JobConflictError,
    JobKind,
    JobNotFoundError,
    JobStatus,
    JobStore,
    Progress,
    RecoveryPolicy,
    RecoveryReport,
    file_source_key,
    new_job_id,
    url_source_key,
)
from serve.jobstore.redis import RedisJobStore
from serve.jobstore.sqlite import SQLiteJobStore, sqlite_connect, sqlite_enable_wal

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
