"""API keys (stored hashed) and per-key rate limits.

Paper section 5.4: access is granted to trusted partners only, both to deter white-box attacks
and to keep traffic within the service's means. A key is ``dfd_<key_id>_<secret>``: ``key_id``
is public (logs, admin lists, rate-limit buckets), ``secret`` is 256 random bits. Only the
SHA-256 of the whole key is stored; a fast hash is enough for a random secret of that size (a
slow password hash protects low-entropy secrets, which these are not). The plaintext is
returned once, by :meth:`KeyStore.create_key`.

Rate limits are token buckets: a key may burst ``burst`` requests (default: its per-minute rate)
and regains ``rate_per_min / 60`` tokens per second. Backends: in memory (one process) and Redis
(shared by every replica; one Lua script makes each decision atomic).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from serve.jobstore.sqlite import sqlite_connect, sqlite_enable_wal

__all__ = [
    "KEY_PREFIX",
    "KeyRecord",
    "KeyStore",
    "MemoryRateLimiter",
    "RateDecision",
    "RateLimiter",
    "RedisKeyStore",
    "RedisRateLimiter",
    "SQLiteKeyStore",
    "hash_key",
    "parse_key",
]

KEY_PREFIX = "dfd"
_KEY_RE = re.compile(rf"{KEY_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{20,128}})")
_ID_RE = re.compile(r"[0-9a-f]{12}")


class KeyRecord(BaseModel):
    """A stored API key: never the plaintext, only ``key_hash`` (SHA-256 hex of the key)."""

    model_config = ConfigDict(frozen=True)

    key_id: str = Field(pattern=r"^[0-9a-f]{12}$")
    name: str = Field(min_length=1, max_length=200)
    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$", repr=False)
    created_at: AwareDatetime
    revoked: bool = False
    rate_per_min: int = Field(ge=1, le=1_000_000)


def hash_key(plaintext: str) -> str:
    """SHA-256 hex digest of the whole key string."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def parse_key(plaintext: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else ``None``."""
    m = _KEY_RE.fullmatch(plaintext.strip())
    return (m.group(1), m.group(2)) if m else None


_DUMMY_HASH = hash_key("dfd_000000000000_unknown-key-id-comparison-pad")


class KeyStore(ABC):
    """Create, verify, list and revoke API keys. ``clock``: seconds since the epoch."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def create_key(self, name: str, rate_per_min: int = 60) -> tuple[str, str]:
        """A new key: returns ``(key_id, plaintext)``. The plaintext is not stored anywhere and
        cannot be recovered; show it to the user once."""
        key_id = secrets.token_hex(6)
        plaintext = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(
            key_id=key_id,
            name=name,
            key_hash=hash_key(plaintext),
            created_at=datetime.fromtimestamp(self._clock(), UTC),
            rate_per_min=rate_per_min,
        )
        self._insert(record)
        return key_id, plaintext

    def verify(self, plaintext: str) -> KeyRecord | None:
        """The key's record if ``plaintext`` is a valid, unrevoked key, else ``None``."""
        parsed = parse_key(plaintext)
        record = self.get(parsed[0]) if parsed else None
        # Always one constant-time comparison, whether or not the id exists.
        expected = record.key_hash if record is not None else _DUMMY_HASH
        matches = hmac.compare_digest(expected, hash_key(plaintext.strip()))
        if record is None or not matches or record.revoked:
            return None
        return record

    @abstractmethod
    def _insert(self, record: KeyRecord) -> None: ...

    @abstractmethod
    def get(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id`` (revoked or not), or ``None``."""

    @abstractmethod
    def list_keys(self) -> list[KeyRecord]:
        """All keys, revoked ones included, oldest first."""

    @abstractmethod
    def revoke(self, key_id: str) -> bool:
        """Revoke the key at once; ``False`` if there is no such key."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release connections (a no-op where there are none)."""


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
"""


class SQLiteKeyStore(KeyStore):
    """Keys in a SQLite file (may be the job store's file: the table names do not clash)."""

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
        conn = sqlite_connect(self.path, busy_timeout_s)
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{_SQLITE_SCHEMA}\nCOMMIT;")
        finally:
            conn.close()

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[str, ...]]:
        conn = sqlite_connect(self.path, self._busy_timeout_s)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def _insert(self, record: KeyRecord) -> None:
        self._run(
            "INSERT INTO api_keys (key_id, data) VALUES (?, ?)",
            (record.key_id, record.model_dump_json()),
        )

    def get(self, key_id: str) -> KeyRecord | None:
        if not _ID_RE.fullmatch(key_id):
            return None
        rows = self._run("SELECT data FROM api_keys WHERE key_id = ?", (key_id,))
        return KeyRecord.model_validate_json(rows[0][0]) if rows else None

    def list_keys(self) -> list[KeyRecord]:
        records = [
            KeyRecord.model_validate_json(r[0]) for r in self._run("SELECT data FROM api_keys")
        ]
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    def revoke(self, key_id: str) -> bool:
        conn = sqlite_connect(self.path, self._busy_timeout_s)
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT data FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
            if row is None:
                conn.execute("ROLLBACK")
                return False
            record = KeyRecord.model_validate_json(row[0]).model_copy(update={"revoked": True})
            conn.execute(
                "UPDATE api_keys SET data = ? WHERE key_id = ?", (record.model_dump_json(), key_id)
            )
            conn.execute("COMMIT")
            return True
        finally:
            conn.close()


# One script so the read-modify-write of the revoked flag is atomic without WATCH.
_REVOKE_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local record = cjson.decode(raw)
record['revoked'] = true
redis.call('SET', KEYS[1], cjson.encode(record))
return 1
"""


class RedisKeyStore(KeyStore):
    """Keys in Redis under ``prefix`` (``apikey:<id>`` JSON records and an ``apikeys`` set)."""

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
        self._revoke = self._r.register_script(_REVOKE_LUA)

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}apikey:{key_id}"

    def _index(self) -> str:
        return f"{self.prefix}apikeys"

    def _insert(self, record: KeyRecord) -> None:
        with self._r.pipeline(transaction=True) as pipe:
            pipe.set(self._key(record.key_id), record.model_dump_json(), nx=True)
            pipe.sadd(self._index(), record.key_id)
            created, _ = pipe.execute()
        if not created:  # 48-bit ids: a collision is astronomically unlikely, but never silent
            raise RuntimeError(f"API key id {record.key_id} already exists; create the key again")

    def get(self, key_id: str) -> KeyRecord | None:
        if not _ID_RE.fullmatch(key_id):
            return None
        raw = self._r.get(self._key(key_id))
        return KeyRecord.model_validate_json(raw) if raw is not None else None

    def list_keys(self) -> list[KeyRecord]:
        ids = sorted(str(i) for i in self._r.smembers(self._index()))
        raws = self._r.mget([self._key(i) for i in ids]) if ids else []
        records = [KeyRecord.model_validate_json(r) for r in raws if r is not None]
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    def revoke(self, key_id: str) -> bool:
        if not _ID_RE.fullmatch(key_id):
            return False
        return bool(self._revoke(keys=[self._key(key_id)]))

    def close(self) -> None:
        self._r.close()


# ---------------------------------------------------------------------------------------------
# Rate limiting


@dataclass(frozen=True)
class RateDecision:
    """One limiter decision. ``retry_after_s`` is 0 when allowed, else the seconds until enough
    tokens are back; ``remaining`` is the whole tokens left after this request."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit``/``RateLimit-Remaining``, plus ``Retry-After`` (whole seconds,
        rounded up) when refused."""
        out = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining)}
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


def _bucket_params(rate_per_min: int, burst: int | None, cost: int) -> tuple[int, float]:
    if rate_per_min < 1:
        raise ValueError(f"rate_per_min must be >= 1, got {rate_per_min}")
    capacity = rate_per_min if burst is None else burst
    if capacity < 1 or not 0 <= cost <= capacity:
        raise ValueError(f"need 0 <= cost ({cost}) <= burst ({capacity})")
    return capacity, rate_per_min / 60.0


class RateLimiter(ABC):
    """Token-bucket limiter keyed by an arbitrary bucket id (an API key id, a client address)."""

    @abstractmethod
    def hit(
        self, bucket_id: str, rate_per_min: int, *, burst: int | None = None, cost: int = 1
    ) -> RateDecision:
        """Take ``cost`` tokens from ``bucket_id``'s bucket if it has them.

        The bucket holds at most ``burst`` tokens (default ``rate_per_min``) and refills at
        ``rate_per_min / 60`` tokens per second; a new bucket starts full. ``cost`` 0 only
        looks: allowed while at least one token is left, nothing taken.
        """


class MemoryRateLimiter(RateLimiter):
    """Buckets in this process's memory (thread-safe). ``clock``: monotonic seconds.

    Full buckets are forgotten once more than ``max_buckets`` exist (a full bucket is the same
    as no bucket), so memory stays bounded when buckets are client addresses.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        self._clock = clock
        self._max_buckets = max_buckets
        self._lock = threading.Lock()
        # bucket id -> (tokens, last refill time, capacity, tokens per second)
        self._buckets: dict[str, tuple[float, float, int, float]] = {}

    def hit(
        self, bucket_id: str, rate_per_min: int, *, burst: int | None = None, cost: int = 1
    ) -> RateDecision:
        capacity, per_s = _bucket_params(rate_per_min, burst, cost)
        with self._lock:
            now = self._clock()
            tokens, last, _, _ = self._buckets.get(bucket_id, (capacity, now, capacity, per_s))
            tokens = min(tokens, capacity)  # the key's limit may have been lowered
            if now > last:
                tokens = min(capacity, tokens + (now - last) * per_s)
                last = now
            need = max(cost, 1)
            allowed = tokens >= need
            if allowed:
                tokens -= cost
            self._buckets[bucket_id] = (tokens, last, capacity, per_s)
            if len(self._buckets) > self._max_buckets:
                self._forget_full(now)
        retry = 0.0 if allowed else (need - tokens) / per_s
        return RateDecision(allowed, capacity, int(tokens), retry)

    def _forget_full(self, now: float) -> None:
        for key, (tokens, last, capacity, per_s) in list(self._buckets.items()):
            if tokens + (now - last) * per_s >= capacity:
                del self._buckets[key]


# The whole decision runs inside Redis, so concurrent replicas never both spend the last token.
# Lua numbers returned to Redis are truncated to integers, hence tostring for the fractions.
_TOKEN_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local per_s = tonumber(ARGV[2])
local cost = tonumber(ARGV[4])
local now = tonumber(ARGV[3])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if tokens > capacity then tokens = capacity end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * per_s)
  ts = now
end
local allowed = 0
local retry = 0
local need = math.max(cost, 1)
if tokens >= need then
  tokens = tokens - cost
  allowed = 1
else
  retry = (need - tokens) / per_s
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / per_s * 1000) + 1000)
return {allowed, tostring(tokens), tostring(retry)}
"""


class RedisRateLimiter(RateLimiter):
    """Buckets in Redis under ``prefix`` (``rl:<bucket id>`` hashes that expire once full).

    ``clock`` (seconds) is for tests; by default the Redis server's own ``TIME`` is used, so
    replicas on hosts with skewed clocks share one timeline.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "dfd:",
        clock: Callable[[], float] | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.prefix = prefix
        self._clock = clock
        self._r: redis.Redis = client or redis.Redis.from_url(url, decode_responses=True)
        self._script = self._r.register_script(_TOKEN_BUCKET_LUA)

    def hit(
        self, bucket_id: str, rate_per_min: int, *, burst: int | None = None, cost: int = 1
    ) -> RateDecision:
        capacity, per_s = _bucket_params(rate_per_min, burst, cost)
        now = "" if self._clock is None else repr(float(self._clock()))
        allowed, tokens, retry = self._script(
            keys=[f"{self.prefix}rl:{bucket_id}"], args=[capacity, repr(per_s), now, cost]
        )
        return RateDecision(bool(int(allowed)), capacity, int(float(tokens)), float(retry))

    def close(self) -> None:
        self._r.close()
