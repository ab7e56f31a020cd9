"""The job store and result cache: one suite run against SQLite and the real Redis on loopback."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from pipeline.errors import InvalidUrlError
from serve.jobstore import (
    UNSET,
    CacheKey,
    Job,
    JobConflictError,
    JobNotFoundError,
    JobStatus,
    JobStore,
    Progress,
    RecoveryPolicy,
    file_source_key,
    new_job_id,
    url_source_key,
)
from serve.jobstore.redis import RedisJobStore
from serve.jobstore.sqlite import SQLiteJobStore, sqlite_connect
from serve.problems import make_problem, problem_type

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_700_000_000.0


class Clock:
    """A settable clock in epoch seconds, so expiry and staleness are tested without sleeping."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _purge_redis(prefix: str) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(r.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            r.delete(*keys)
    finally:
        r.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[JobStore]:
    if request.param == "sqlite":
        with SQLiteJobStore(tmp_path / "state" / "jobs.db", clock=clock) as sqlite_store:
            yield sqlite_store
        return
    prefix = f"dfdtest:{uuid.uuid4().hex}:"
    redis_store = RedisJobStore(REDIS_URL, prefix=prefix, clock=clock)
    try:
        yield redis_store
    finally:
        redis_store.close()
        _purge_redis(prefix)


def _new(clock: Clock, n: int = 0, *, owner: str | None = None, **kw: object) -> Job:
    return Job.new(
        f"https://example.org/v{n}.mp4",
        url_source_key(f"https://example.org/v{n}.mp4"),
        owner=owner,
        now=datetime.fromtimestamp(clock(), UTC),
        **kw,  # type: ignore[arg-type]
    )


# -- the record ---------------------------------------------------------------------------------


def test_job_record_validation() -> None:
    job = Job.new("https://a.b/c.jpg", "url:https://a.b/c.jpg", kind="image", options={"fps": 1})
    assert len(job.id) == 16 and job.status == JobStatus.QUEUED and job.attempts == 0
    assert job.created_at.tzinfo is not None and job.created_at.utcoffset() == timedelta(0)
    assert job.progress == Progress(stage="queued", done=0, total=0)
    for bad_id in ("", "a/b", "a b", "../x", "é", "x" * 65):
        with pytest.raises(ValidationError):
            Job.new("s", "k", job_id=bad_id)
    with pytest.raises(ValidationError):
        Job.new("s", "k", now=datetime(2024, 1, 1))  # naive: refused
    with pytest.raises(ValueError):
        Job.new("s", "k", kind="audio")
    with pytest.raises(ValidationError):
        Progress(stage="x", done=-1)
    ids = {new_job_id() for _ in range(200)}
    assert len(ids) == 200 and all(len(i) == 16 for i in ids)


def test_url_source_key_normalises() -> None:
    assert url_source_key("HTTPS://Example.ORG:443/a/b?x=1&y=2#frag") == (
        "url:https://example.org/a/b?x=1&y=2"
    )
    assert url_source_key("http://example.org") == "url:http://example.org/"
    assert url_source_key("http://example.org:8080/v") == "url:http://example.org:8080/v"
    assert url_source_key("http://[::1]:80/v") == "url:http://[::1]/v"
    # The query order is kept: some servers give different media for a different order.
    assert url_source_key("https://a.org/?b=1&a=2") != url_source_key("https://a.org/?a=2&b=1")
    for bad in ("ftp://a.org/x", "not a url", "https:///nohost", "http://a.org:99999/"):
        with pytest.raises(InvalidUrlError):
            url_source_key(bad)


def test_file_source_key_is_content_sha256(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # spans several read chunks
    p = tmp_path / "upload.bin"
    p.write_bytes(data)
    assert file_source_key(p, chunk_bytes=4096) == "sha256:" + hashlib.sha256(data).hexdigest()
    q = tmp_path / "same.bin"
    q.write_bytes(data)
    assert file_source_key(q) == file_source_key(p)


# -- both backends ------------------------------------------------------------------------------


def test_create_get_roundtrip(store: JobStore, clock: Clock) -> None:
    job = _new(clock, owner="key1", kind="video", options={"max_shots": 3})
    assert store.create(job) == job
    got = store.get(job.id)
    assert got == job
    assert got.options == {"max_shots": 3} and got.kind == "video"
    with pytest.raises(JobConflictError):
        store.create(job)
    with pytest.raises(JobNotFoundError):
        store.get("doesnotexist")
    for bad in ("../etc/passwd", "a*", "x" * 100, ""):
        with pytest.raises(JobNotFoundError):
            store.get(bad)


def test_update_transitions(store: JobStore, clock: Clock) -> None:
    job = store.create(_new(clock))
    clock.advance(5)
    running = store.update(job.id, status="running", progress=Progress(stage="download"))
    assert running.status == JobStatus.RUNNING and running.attempts == 1
    assert running.updated_at == job.created_at + timedelta(seconds=5)
    assert running.created_at == job.created_at
    # Progress only: status and attempts unchanged.
    p = store.update(job.id, progress=Progress(stage="faces", done=3, total=10))
    assert (p.status, p.attempts, p.progress.done, p.progress.total) == ("running", 1, 3, 10)
    assert store.get(job.id) == p
    # Compare-and-set.
    with pytest.raises(JobConflictError):
        store.update(job.id, status="cancelled", expect=["queued"])
    done = store.update(job.id, status="done", result_key=job.id, expect=["running"])
    assert done.result_key == job.id and done.progress.stage == "faces"
    # Final states are final, and the worker learns it from the conflict.
    with pytest.raises(JobConflictError):
        store.update(job.id, progress=Progress(stage="late"))
    with pytest.raises(JobConflictError):
        store.update(job.id, status="running")
    assert store.get(job.id) == done
    with pytest.raises(JobNotFoundError):
        store.update("nope", status="running")


def test_failed_job_keeps_problem_and_unset_leaves_fields(store: JobStore, clock: Clock) -> None:
    job = store.create(_new(clock))
    store.update(job.id, status="running", result_key="partial")
    problem = make_problem("corrupt-media", "no decodable frames", instance=f"/v1/jobs/{job.id}")
    failed = store.update(job.id, status="failed", error=problem, result_key=UNSET)
    assert failed.error == problem.to_dict()
    assert failed.error is not None and failed.error["type"] == problem_type("corrupt-media")
    assert failed.result_key == "partial"
    assert store.get(job.id).error == problem.to_dict()


def test_cancel_queued_job(store: JobStore, clock: Clock) -> None:
    job = store.create(_new(clock))
    cancelled = store.update(job.id, status="cancelled", expect=["queued", "running"])
    assert cancelled.status == JobStatus.CANCELLED and cancelled.attempts == 0
    assert store.claim_next() is None


def test_list_newest_first_with_filters(store: JobStore, clock: Clock) -> None:
    made = []
    for i in range(6):
        made.append(store.create(_new(clock, i, owner="alice" if i % 2 else "bob")))
        clock.advance(1)
    store.update(made[1].id, status="running")
    store.update(made[4].id, status="running")
    ids = [j.id for j in store.list_jobs()]
    assert ids == [j.id for j in reversed(made)]
    assert [j.id for j in store.list_jobs(limit=2)] == [made[5].id, made[4].id]
    assert [j.id for j in store.list_jobs(status="running")] == [made[4].id, made[1].id]
    assert [j.id for j in store.list_jobs(status=JobStatus.QUEUED, limit=3)] == [
        made[5].id,
        made[3].id,
        made[2].id,
    ]
    assert [j.id for j in store.list_jobs(owner="alice")] == [made[5].id, made[3].id, made[1].id]
    assert [j.id for j in store.list_jobs(owner="bob", status="running")] == [made[4].id]
    assert store.list_jobs(owner="carol") == []
    assert store.count() == 6 and store.count("running") == 2 and store.count("done") == 0
    with pytest.raises(ValueError):
        store.list_jobs(limit=0)


def test_delete_removes_job_and_result(store: JobStore, clock: Clock) -> None:
    job = store.create(_new(clock))
    store.put_result(job.id, '{"score": 0.9}')
    assert store.delete(job.id) is True
    with pytest.raises(JobNotFoundError):
        store.get(job.id)
    assert store.get_result(job.id) is None
    assert store.list_jobs() == [] and store.count() == 0
    assert store.delete(job.id) is False
    assert store.delete("../bad") is False


def test_claim_next_takes_oldest_once(store: JobStore, clock: Clock) -> None:
    assert store.claim_next() is None
    jobs = []
    for i in range(3):
        jobs.append(store.create(_new(clock, i)))
        clock.advance(1)
    store.update(jobs[0].id, status="cancelled")
    first = store.claim_next()
    assert first is not None and first.id == jobs[1].id
    assert first.status == JobStatus.RUNNING and first.attempts == 1
    second = store.claim_next()
    assert second is not None and second.id == jobs[2].id
    assert store.claim_next() is None
    assert store.get(jobs[1].id).status == JobStatus.RUNNING


def test_requeue_running_counts_attempts_then_fails(store: JobStore, clock: Clock) -> None:
    job = store.create(_new(clock))
    idle = store.create(_new(clock, 1))
    for attempt in (1, 2):
        claimed = store.claim_next()
        assert claimed is not None and claimed.id == job.id and claimed.attempts == attempt
        store.update(job.id, progress=Progress(stage="faces", done=1, total=4))
        report = store.requeue_running("worker restarted", max_attempts=3)
        assert report.requeued == [job.id] and report.failed == []
        back = store.get(job.id)
        assert back.status == JobStatus.QUEUED and back.progress.stage == "queued"
        assert back.attempts == attempt
        # Put the untouched queued job behind this one again.
        assert store.get(idle.id).status == JobStatus.QUEUED
    claimed = store.claim_next()
    assert claimed is not None and claimed.attempts == 3
    report = store.requeue_running("worker restarted", max_attempts=3)
    assert report.requeued == [] and report.failed == [job.id]
    failed = store.get(job.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None
    assert failed.error["type"] == problem_type("internal")
    assert failed.error["detail"] == "worker restarted"
    assert failed.error["attempts"] == 3
    assert store.requeue_running("again").model_dump() == {"requeued": [], "failed": []}


def test_requeue_running_fail_policy_and_staleness(store: JobStore, clock: Clock) -> None:
    old = store.create(_new(clock, 0))
    fresh = store.create(_new(clock, 1))
    assert store.claim_next() is not None
    clock.advance(120)
    assert store.claim_next() is not None  # fresh starts 120 s later
    clock.advance(30)
    # Only jobs silent for 60 s or more are considered dead.
    report = store.requeue_running("lost heartbeat", policy=RecoveryPolicy.FAIL, stale_after_s=60)
    assert report.failed == [old.id] and report.requeued == []
    assert store.get(fresh.id).status == JobStatus.RUNNING
    assert store.get(old.id).status == JobStatus.FAILED
    # A heartbeat (progress update) keeps a job alive.
    clock.advance(50)
    store.update(fresh.id, progress=Progress(stage="inference", done=2, total=5))
    clock.advance(50)
    assert store.requeue_running("x", policy="fail", stale_after_s=60).failed == []
    report = store.requeue_running("x", policy="requeue", stale_after_s=10)
    assert report.requeued == [fresh.id]
    with pytest.raises(ValueError):
        store.requeue_running("x", policy="explode")


def test_results_and_cache(store: JobStore, clock: Clock) -> None:
    job = store.create(_new(clock))
    key = CacheKey("0.1.0", job.source_key)
    assert store.get_result(job.id) is None
    assert store.cache_get(key) is None
    with pytest.raises(JobNotFoundError):
        store.put_result("missing", "{}")
    store.put_result(job.id, '{"v": 1}')
    store.put_result(job.id, '{"v": 2, "text": "ünïcode"}')
    assert store.get_result(job.id) == '{"v": 2, "text": "ünïcode"}'
    store.cache_put(key, job.id)
    assert store.cache_get(key) == job.id
    # Another service version or source is a miss.
    assert store.cache_get(CacheKey("0.2.0", job.source_key)) is None
    assert store.cache_get(CacheKey("0.1.0", "sha256:" + "0" * 64)) is None
    # A very long source key is fine (it is hashed into the key).
    long_key = CacheKey("0.1.0", "url:https://example.org/" + "a" * 5000)
    store.cache_put(long_key, job.id)
    assert store.cache_get(long_key) == job.id
    # Deleting the job that holds the result makes the cached entry a miss.
    store.delete(job.id)
    assert store.cache_get(key) is None


def test_cache_ttl_uses_the_store_clock(store: JobStore, clock: Clock) -> None:
    job = store.create(_new(clock))
    store.put_result(job.id, "{}")
    key = CacheKey("1.0.0", job.source_key)
    store.cache_put(key, job.id, ttl_s=3600)
    clock.advance(3599)
    assert store.cache_get(key) == job.id
    clock.advance(2)
    assert store.cache_get(key) is None
    # Replacing an entry resets it.
    store.cache_put(key, job.id)
    clock.advance(10**6)
    assert store.cache_get(key) == job.id


def test_concurrent_updates_of_different_jobs(store: JobStore, clock: Clock) -> None:
    n_threads, n_updates = 6, 20
    jobs = [store.create(_new(clock, i)) for i in range(n_threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def work(job: Job) -> None:
        try:
            start.wait(timeout=30)
            store.update(job.id, status="running")
            for k in range(1, n_updates + 1):
                store.update(job.id, progress=Progress(stage="faces", done=k, total=n_updates))
            store.put_result(job.id, f'{{"id": "{job.id}"}}')
            store.update(job.id, status="done", result_key=job.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    for job in jobs:
        got = store.get(job.id)
        assert got.status == JobStatus.DONE and got.attempts == 1
        assert got.progress == Progress(stage="faces", done=n_updates, total=n_updates)
        assert store.get_result(job.id) == f'{{"id": "{job.id}"}}'
    assert store.count("done") == n_threads


def test_concurrent_claims_never_hand_out_a_job_twice(store: JobStore, clock: Clock) -> None:
    n_jobs, n_threads = 40, 5
    ids = {store.create(_new(clock, i)).id for i in range(n_jobs)}
    claimed: list[list[str]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def work(slot: int) -> None:
        try:
            start.wait(timeout=30)
            while (job := store.claim_next()) is not None:
                claimed[slot].append(job.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    flat = [i for part in claimed for i in part]
    assert len(flat) == n_jobs and set(flat) == ids
    assert store.count("running") == n_jobs and store.count("queued") == 0


# -- SQLite under two processes -----------------------------------------------------------------


def _claim_in_process(db: str, barrier: threading.Barrier, out: mp.Queue) -> None:
    store = SQLiteJobStore(db, busy_timeout_s=30)
    barrier.wait(timeout=60)
    got = []
    while (job := store.claim_next()) is not None:
        store.update(job.id, progress=Progress(stage="work", done=1, total=1))
        store.update(job.id, status="done")
        got.append(job.id)
    out.put(got)


def test_sqlite_two_processes_share_one_queue(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    store = SQLiteJobStore(db)
    ids = {store.create(Job.new(f"s{i}", f"k{i}")).id for i in range(60)}
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(str(db), barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    parts = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    flat = parts[0] + parts[1]
    assert len(flat) == len(ids) and set(flat) == ids
    assert store.count("done") == len(ids)


def test_the_embedded_state_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Jobs and key hashes live in SQLite files created 0600 in a folder created 0700 (SQLite
    gives its WAL files the database's mode), artefacts in a folder created 0700, whatever the
    umask; folders and files that already exist keep their modes."""
    import os
    import stat

    from serve.auth import SQLiteKeyStore
    from serve.storage import LocalStorage

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    old = os.umask(0o022)
    try:
        home = tmp_path / "home"
        jobs = SQLiteJobStore(home / "state" / "jobs.db")
        jobs.count()
        SQLiteKeyStore(home / "state" / "keys.db").create_key("k")
        storage = LocalStorage(home / "artefacts")
        storage.put_bytes("jobs/a/x.jpg", b"x")
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        LocalStorage(shared)
    finally:
        os.umask(old)
    state = home / "state"
    assert mode(state) == 0o700 and mode(home / "artefacts") == 0o700
    reader = sqlite_connect(state / "jobs.db")  # an open connection keeps the WAL files
    try:
        reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
        modes = {p.name: mode(p) for p in state.iterdir()}
    finally:
        reader.close()
    assert set(modes) >= {"jobs.db", "jobs.db-wal", "jobs.db-shm", "keys.db"}
    assert modes == dict.fromkeys(modes, 0o600)
    assert mode(shared) == 0o755
