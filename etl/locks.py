"""The only module that talks to Redis directly (redis-py): a lease lock for the fetcher.

Celery itself reaches Redis through kombu; this is for the one thing kombu does not do.
"""

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis


@contextmanager
def lease(url: str, name: str, seconds: float) -> Iterator[bool]:
    """Hold ``name`` for at most ``seconds`` if nobody else does; yields whether we got it.

    The TTL means a crashed holder can never block the lock for longer than ``seconds``.
    If Redis is unreachable we yield False: fetching without the broker is pointless anyway.
    """
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    lock = client.lock(name, timeout=seconds, blocking=False)
    try:
        acquired = bool(lock.acquire())
    except redis.RedisError:
        acquired = False
    try:
        yield acquired
    finally:
        if acquired:
            with suppress(redis.RedisError):  # expired or Redis gone: the TTL cleans up
                lock.release()
        client.close()
