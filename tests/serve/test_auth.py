"""API keys (hashed at rest, revocable) and rate limiters, against SQLite and the real Redis."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from serve.auth import (
    KeyRecord,
    KeyStore,
    MemoryRateLimiter,
    RateLimiter,
    RedisKeyStore,
    RedisRateLimiter,
    SQLiteKeyStore,
    hash_key,
    parse_key,
)
from serve.jobstore import Job
from serve.jobstore.sqlite import SQLiteJobStore

REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"dfdtest:{uuid.uuid4().hex}:"
    yield prefix
    r = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(r.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            r.delete(*keys)
    finally:
        r.close()


def _redis_dump(prefix: str) -> bytes:
    """Every key name and value under ``prefix``, as bytes."""
    r = redis.Redis.from_url(REDIS_URL)
    try:
        out = []
        for key in r.scan_iter(match=f"{prefix}*", count=500):
            kind = r.type(key)
            out.append(key)
            if kind == b"string":
                out.append(r.get(key) or b"")
            elif kind == b"set":
                out.extend(sorted(r.smembers(key)))
            elif kind == b"hash":
                for k, v in r.hgetall(key).items():
                    out.extend([k, v])
        return b"\n".join(out)
    finally:
        r.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def keys(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        yield SQLiteKeyStore(tmp_path / "state.db", clock=clock)
        return
    prefix = request.getfixturevalue("redis_prefix")
    store = RedisKeyStore(REDIS_URL, prefix=prefix, clock=clock)
    yield store
    store.close()


def _at_rest(store: KeyStore) -> bytes:
    if isinstance(store, SQLiteKeyStore):
        parts = [store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm")]
        return b"".join(p.read_bytes() for p in parts if p.exists())
    assert isinstance(store, RedisKeyStore)
    return _redis_dump(store.prefix)


def test_key_format_and_parse() -> None:
    assert parse_key("dfd_0123456789ab_" + "s" * 43) == ("0123456789ab", "s" * 43)
    for bad in ("", "dfd_", "dfd_0123456789ab_", "abc_0123456789ab_" + "s" * 43, "dfd_XYZ_secret"):
        assert parse_key(bad) is None
    assert len(hash_key("x")) == 64


def test_create_and_verify(keys: KeyStore) -> None:
    key_id, plaintext = keys.create_key("newsroom", rate_per_min=30)
    assert plaintext.startswith(f"dfd_{key_id}_")
    assert parse_key(plaintext) == (key_id, plaintext.split("_", 2)[2])
    assert len(plaintext.split("_", 2)[2]) >= 43  # 256 random bits
    record = keys.verify(plaintext)
    assert record is not None
    assert (record.key_id, record.name, record.rate_per_min, record.revoked) == (
        key_id,
        "newsroom",
        30,
        False,
    )
    assert record.key_hash == hash_key(plaintext)
    assert keys.verify(f"  {plaintext}\n") == record  # pasted with whitespace
    assert keys.get(key_id) == record
    # A wrong secret for a real id, an unknown id, garbage: all refused.
    assert keys.verify(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert keys.verify(f"dfd_ffffffffffff_{plaintext.split('_', 2)[2]}") is None
    assert keys.verify("Bearer nonsense") is None
    assert keys.verify("") is None
    other_id, other = keys.create_key("second")
    assert other_id != key_id
    # The secret of one key with the id of another is not a key.
    assert keys.verify(f"dfd_{other_id}_{plaintext.split('_', 2)[2]}") is None
    assert keys.verify(other) is not None
    with pytest.raises(ValueError):
        keys.create_key("", rate_per_min=10)
    with pytest.raises(ValueError):
        keys.create_key("zero", rate_per_min=0)


def test_hashed_at_rest(keys: KeyStore) -> None:
    key_id, plaintext = keys.create_key("fact-checkers")
    secret = plaintext.split("_", 2)[2]
    stored = _at_rest(keys)
    assert hash_key(plaintext).encode() in stored  # the store really is what we looked at
    assert key_id.encode() in stored
    assert plaintext.encode() not in stored
    assert secret.encode() not in stored
    assert secret[:16].encode() not in stored


def test_revoke_and_list(keys: KeyStore, clock: Clock) -> None:
    a_id, a = keys.create_key("a", rate_per_min=5)
    clock.advance(1)
    b_id, b = keys.create_key("b", rate_per_min=7)
    assert [r.key_id for r in keys.list_keys()] == [a_id, b_id]
    assert keys.revoke(a_id) is True
    assert keys.verify(a) is None
    assert keys.verify(b) is not None
    listed = {r.key_id: r for r in keys.list_keys()}
    assert listed[a_id].revoked is True and listed[b_id].revoked is False
    assert listed[a_id].rate_per_min == 5 and listed[a_id].name == "a"
    assert keys.revoke(a_id) is True  # idempotent
    assert keys.revoke("ffffffffffff") is False
    assert keys.revoke("../../x") is False
    assert keys.get("not-an-id") is None


def test_key_store_shares_the_job_store_file(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    jobs = SQLiteJobStore(db)
    store = SQLiteKeyStore(db)
    key_id, plaintext = store.create_key("shared")
    job = jobs.create(Job.new("https://a.org/x.jpg", "url:https://a.org/x.jpg", owner=key_id))
    assert SQLiteKeyStore(db).verify(plaintext) is not None
    assert jobs.list_jobs(owner=key_id) == [job]


def test_key_record_never_prints_the_hash() -> None:
    record = KeyRecord(
        key_id="0123456789ab",
        name="n",
        key_hash="a" * 64,
        created_at="2024-01-01T00:00:00Z",  # type: ignore[arg-type]
        rate_per_min=1,
    )
    assert "a" * 64 not in repr(record)


# -- rate limiters --------------------------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def limiter(request: pytest.FixtureRequest, clock: Clock) -> Iterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter(clock=clock)
        return
    prefix = request.getfixturevalue("redis_prefix")
    lim = RedisRateLimiter(REDIS_URL, prefix=prefix, clock=clock)
    yield lim
    lim.close()


def test_limiter_allows_n_then_refuses_then_refills(limiter: RateLimiter, clock: Clock) -> None:
    decisions = [limiter.hit("key1", rate_per_min=6) for _ in range(6)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [5, 4, 3, 2, 1, 0]
    refused = limiter.hit("key1", rate_per_min=6)
    assert not refused.allowed
    # 6 per minute: one token every 10 s.
    assert refused.retry_after_s == pytest.approx(10.0)
    assert refused.headers() == {
        "RateLimit-Limit": "6",
        "RateLimit-Remaining": "0",
        "Retry-After": "10",
    }
    # Other keys have their own bucket.
    assert limiter.hit("key2", rate_per_min=6).allowed
    clock.advance(4)
    again = limiter.hit("key1", rate_per_min=6)
    assert not again.allowed and again.retry_after_s == pytest.approx(6.0)
    clock.advance(6)
    assert limiter.hit("key1", rate_per_min=6).allowed
    assert not limiter.hit("key1", rate_per_min=6).allowed
    # A long pause refills to the burst size, not beyond.
    clock.advance(3600)
    assert sum(limiter.hit("key1", rate_per_min=6).allowed for _ in range(10)) == 6


def test_limiter_burst_and_cost(limiter: RateLimiter, clock: Clock) -> None:
    assert [limiter.hit("k", rate_per_min=60, burst=2).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    clock.advance(1.5)  # 1.5 tokens back at 1/s
    d = limiter.hit("k", rate_per_min=60, burst=2, cost=2)
    assert not d.allowed and d.retry_after_s == pytest.approx(0.5)
    assert d.headers()["Retry-After"] == "1"  # whole seconds, rounded up
    clock.advance(0.5)
    assert limiter.hit("k", rate_per_min=60, burst=2, cost=2).allowed
    with pytest.raises(ValueError):
        limiter.hit("k", rate_per_min=60, burst=2, cost=3)
    with pytest.raises(ValueError):
        limiter.hit("k", rate_per_min=0)


def test_limiter_cost_zero_looks_without_taking(limiter: RateLimiter, clock: Clock) -> None:
    assert limiter.hit("p", rate_per_min=60, burst=1, cost=0).allowed
    assert limiter.hit("p", rate_per_min=60, burst=1, cost=0).remaining == 1
    assert limiter.hit("p", rate_per_min=60, burst=1).allowed
    d = limiter.hit("p", rate_per_min=60, burst=1, cost=0)
    assert not d.allowed and d.retry_after_s == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.hit("p", rate_per_min=60, burst=1, cost=0).allowed


def test_limiter_is_atomic_under_threads(limiter: RateLimiter) -> None:
    allowed = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def work() -> None:
        start.wait(timeout=30)
        for _ in range(15):
            d = limiter.hit("shared", rate_per_min=20)
            with lock:
                allowed.append(d.allowed)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # The clock is frozen: exactly the 20 tokens of the bucket are handed out, no more.
    assert len(allowed) == 60 and sum(allowed) == 20


@pytest.mark.redis
def test_redis_limiter_on_server_time(redis_prefix: str) -> None:
    lim = RedisRateLimiter(REDIS_URL, prefix=redis_prefix)
    try:
        # 1 per minute: the second hit within the test cannot have been refilled.
        assert lim.hit("k", rate_per_min=1).allowed
        d = lim.hit("k", rate_per_min=1)
        assert not d.allowed and 50 < d.retry_after_s <= 60
        ttl = redis.Redis.from_url(REDIS_URL).pttl(f"{redis_prefix}rl:k")
        assert 0 < ttl <= 61_000  # the bucket state expires once it would be full again
    finally:
        lim.close()


def test_memory_limiter_forgets_full_buckets(clock: Clock) -> None:
    lim = MemoryRateLimiter(clock=clock, max_buckets=10)
    for i in range(10):
        lim.hit(f"ip{i}", rate_per_min=60)
    clock.advance(2)  # every bucket is full again
    lim.hit("new", rate_per_min=60)
    assert len(lim._buckets) <= 10
    # Forgetting a full bucket changes nothing for its owner.
    assert all(lim.hit(f"ip{i}", rate_per_min=60).remaining == 59 for i in range(3))
