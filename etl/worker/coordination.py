"""The only module that talks to Redis directly (redis-py): coordination kombu does not do for us.

(Celery's broker is kombu's business; this is the state our processes share beside it, in the
same Redis.)

* a lease lock, so overlapping fetch runs (two beats, a slow run) do not stack;
* the broker queue's length, for backpressure;
* progress heartbeats (last fetch, last commit per worker), for ``etl health``;
* small JSON records in hashes: a stream's read pointers and per-shard status (their keys:
  etl.sources.kinesis.fetch.stream_key);
* end-to-end latency counts per minute and bucket (etl.model.latency), for ``etl stats``;
* sealed chunks, each under a key of its own (``stash``): a chunk task carries only the key.
"""

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis

from etl.errors import ConfigError, TerminalError, TransientError

HEARTBEATS = "etl:heartbeats"  # hash: "<what>:<node>" -> unix time
LATENCY = "etl:latency-v2:"  # + unix minute: hash, latency bucket -> messages committed in that minute
# (v2: the buckets at 1.5 and 2.0 s; counts written under the old buckets, without them, would read
# as if their (1.0, 2.5] bucket were (2.0, 2.5], so they are kept apart and age out)
LATENCY_KEEP = 3600  # seconds a minute's counts are kept
CHUNKS = "etl:chunk:"  # + 32 random hex digits: one sealed chunk (a string value with a TTL)
FIX = "check CELERY_BROKER_URL and that Redis is up"


def where(url: str) -> str:
    """``host:port/db`` of a redis:// URL, never its password."""
    try:
        kwargs = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:
        return "(an unreadable CELERY_BROKER_URL)"
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def failure(exc: redis.RedisError) -> str:
    """A redis-py error in words (its text can name hosts, never data; only our words leave)."""
    text = str(exc).lower()
    if isinstance(exc, redis.AuthenticationError) or "noauth" in text or "wrongpass" in text or "auth" in text:
        return f"authentication failed ({type(exc).__name__}): fix the password in CELERY_BROKER_URL"
    if isinstance(exc, redis.TimeoutError):
        return "no answer in time (TimeoutError)"
    if "refused" in text or "error 111" in text:
        return "connection refused (nothing listens there)"
    if "name or service not known" in text or "error -2" in text or "nodename" in text:
        return "unknown host"
    return type(exc).__name__


class Coordinator:
    """Leases, queue length and heartbeats in Redis (one client per process)."""

    def __init__(self, url: str) -> None:
        try:
            self._redis = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        except ValueError:
            scheme, sep, _ = url.partition("://")
            said = f"the scheme {scheme}://" if sep and scheme.isalnum() else "no scheme etl can read"
            raise ConfigError(  # never the URL itself: it may hold a password
                f"CELERY_BROKER_URL has {said}: etl needs Redis; "
                "set CELERY_BROKER_URL=redis://host:6379/0 (or rediss://, unix://)"
            ) from None
        self.where = where(url)

    def _failed(self, operation: str, exc: redis.RedisError) -> TransientError:
        """What failed, where (host:port/db, never a password) and what to check, in one line."""
        return TransientError(f"Redis {operation} at {self.where} failed: {failure(exc)}; {FIX}")

    def ping(self) -> None:
        """Raise TransientError (with where and why) unless Redis answers."""
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise self._failed("PING", exc) from None

    def eviction_policy(self) -> str | None:
        """Redis's maxmemory-policy (None where CONFIG is refused, as on some managed Redis)."""
        try:
            value = self._redis.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError:
            return None
        except redis.RedisError as exc:
            raise self._failed("CONFIG GET", exc) from None
        return value.decode() if isinstance(value, bytes) else value

    @contextmanager
    def lease(self, name: str, seconds: float) -> Iterator[bool]:
        """Hold ``name`` for at most ``seconds`` if nobody else does; yields whether we got it.

        The TTL means a crashed holder can never block the lock for longer than ``seconds``.
        Raises TransientError if Redis cannot be asked (that is not "somebody else holds it").
        """
        lock = self._redis.lock(name, timeout=seconds, blocking=False)
        try:
            acquired = bool(lock.acquire())
        except redis.RedisError as exc:
            raise self._failed(f"lease {name}", exc) from None
        try:
            yield acquired
        finally:
            if acquired:
                with suppress(redis.RedisError):  # expired or Redis gone: the TTL cleans up
                    lock.release()

    def queued(self, queue: str) -> int:
        """Tasks waiting in a Celery queue (kombu keeps them in a Redis list of that name)."""
        try:
            return int(self._redis.llen(queue))
        except redis.RedisError as exc:
            raise self._failed("LLEN", exc) from None

    def flag(self, name: str, seconds: float) -> bool:
        """Set ``name`` for ``seconds`` unless it is already set; True if we set it."""
        try:
            return bool(self._redis.set(name, "1", nx=True, px=int(seconds * 1000)))
        except redis.RedisError as exc:
            raise self._failed("SET", exc) from None

    def stash(self, sealed: bytes, seconds: int) -> str:
        """Keep a sealed chunk for ``seconds`` under a new random key, and return the key.

        The chunk's task carries this key instead of the ciphertext: the broker message stays a
        few hundred bytes, so kombu does not JSON-encode, copy (its unacked hash) and decode a
        megabyte per chunk in three processes; the ciphertext crosses Redis once each way."""
        key = f"{CHUNKS}{secrets.token_hex(16)}"
        try:
            self._redis.set(key, sealed, ex=max(1, seconds))
        except redis.RedisError as exc:
            raise self._failed("SET", exc) from None
        return key

    def claim(self, key: str) -> bytes | None:
        """The sealed chunk kept under ``key``; None once it expired or was discarded (or Redis
        lost it). TerminalError when ``key`` holds something else than a chunk (a list, a hash)."""
        try:
            value = self._redis.get(key)
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise self._failed("GET", exc) from None
            raise TerminalError("the task names a Redis key that holds no chunk (WRONGTYPE)") from None
        except redis.RedisError as exc:
            raise self._failed("GET", exc) from None
        return value if value is None or isinstance(value, bytes) else str(value).encode()

    def discard(self, key: str) -> None:
        """Forget a stashed chunk (best effort: its TTL removes it anyway). Anything but a chunk's
        key (a sealed chunk carried in its task by an older publisher, another of our keys named
        by a forged task) is left alone."""
        if not key.startswith(CHUNKS):
            return
        with suppress(redis.RedisError):
            self._redis.delete(key)

    def heartbeat(self, what: str, node: str) -> None:
        """Record that ``node`` just did ``what`` (best effort: never fail a chunk for this)."""
        with suppress(redis.RedisError):
            self._redis.hset(HEARTBEATS, f"{what}:{node}", f"{time.time():.3f}")

    def heartbeats(self) -> dict[str, float]:
        """All recorded heartbeats, as {"<what>:<node>": unix time}."""
        try:
            raw = self._redis.hgetall(HEARTBEATS)
        except redis.RedisError as exc:
            raise self._failed("HGETALL", exc) from None
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}

    def put(self, name: str, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` (JSON) under ``key`` in the hash ``name``."""
        try:
            self._redis.hset(name, key, json.dumps(value))
        except redis.RedisError as exc:
            raise self._failed("HSET", exc) from None

    def forget(self, name: str, key: str) -> None:
        """Remove ``key`` from the hash ``name``."""
        try:
            self._redis.hdel(name, key)
        except redis.RedisError as exc:
            raise self._failed("HDEL", exc) from None

    def entries(self, name: str) -> dict[str, dict[str, Any]]:
        """Every JSON record in the hash ``name``, by key."""
        try:
            raw = self._redis.hgetall(name)
        except redis.RedisError as exc:
            raise self._failed("HGETALL", exc) from None
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}

    def count_latencies(self, counts: dict[str, int], now: float | None = None) -> None:
        """Add committed messages' latency bucket counts to this minute's (best effort, like a
        heartbeat: never fail a chunk for it)."""
        if not counts:
            return
        key = f"{LATENCY}{int((now if now is not None else time.time()) // 60)}"
        with suppress(redis.RedisError):
            pipe = self._redis.pipeline(transaction=False)
            for bucket, n in counts.items():
                pipe.hincrby(key, bucket, n)
            pipe.expire(key, LATENCY_KEEP)
            pipe.execute()

    def latencies(self, minutes: int, now: float | None = None) -> list[dict[str, int]]:
        """The latency bucket counts of the last ``minutes`` minutes (this one included)."""
        this = int((now if now is not None else time.time()) // 60)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for m in range(this - minutes + 1, this + 1):
                pipe.hgetall(f"{LATENCY}{m}")
            raw = pipe.execute()
        except redis.RedisError as exc:
            raise TransientError(f"Redis HGETALL failed: {type(exc).__name__}") from None
        return [{(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in h.items()} for h in raw]
