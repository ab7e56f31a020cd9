"""The cluster job store: :class:`RedisJobStore`, optimistic ``WATCH``/``MULTI`` transactions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import redis

from serve.jobstore import base
from serve.jobstore.base import CacheKey, Job, JobConflictError, JobStatus, JobStore

__all__ = ["RedisJobStore"]


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
                        raise base.already_exists(job.id)
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
        base.check_job_id(job_id)
        raw = self._r.get(self._job(job_id))
        if raw is None:
            raise base.not_found(job_id)
        return Job.model_validate_json(raw)

    def _write_job(self, pipe: Any, old: Job, new: Job, score: float | None) -> None:
        """Queue the writes replacing ``old`` by ``new`` (call after ``pipe.multi()``); ``score``
        is the job's insertion number (read with ZSCORE while watching)."""
        pipe.set(self._job(new.id), new.model_dump_json())
        if old.status != new.status:
            pipe.zrem(self._by_status(old.status), new.id)
            pipe.zadd(self._by_status(new.status), {new.id: score or 0})

    def _mutate(self, job_id: str, fn: Callable[[Job], Job]) -> Job:
        base.check_job_id(job_id)
        key = self._job(job_id)
        with self._r.pipeline() as pipe:
            for _ in self._retrying():
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise base.not_found(job_id)
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
        limit = base.check_list_limit(limit)
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
        if not base.is_job_id(job_id):
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
                    new = base.claimed(old, self._now())
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
        base.check_job_id(job_id)
        key = self._job(job_id)
        with self._r.pipeline() as pipe:
            for _ in self._retrying():
                try:
                    pipe.watch(key)
                    if not pipe.exists(key):
                        raise base.not_found(job_id)
                    pipe.multi()
                    pipe.set(self._result(job_id), result_json)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def get_result(self, job_id: str) -> str | None:
        if not base.is_job_id(job_id):
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
