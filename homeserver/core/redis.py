"""The Redis client of a worker, when the config names one (``redis.url``): shared by the
workers of a deployment for what must agree across them (rate limits)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeserver.core.config import HomeserverConfig

if TYPE_CHECKING:
    # redis-py (with the cryptography it pulls in, ~20 MB) is imported only when a
    # deployment names a Redis: a single process never does.
    from redis.asyncio import Redis

# A command that takes longer fails: what waits on Redis (a rate limit) goes on without it
# rather than stall the request.
COMMAND_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 0.5


def connect(config: HomeserverConfig) -> Redis | None:
    """A client of ``config.redis.url`` (connecting on first use), or None without one."""
    if config.redis.url is None:
        return None
    from redis.asyncio import Redis

    return Redis.from_url(
        config.redis.url,
        socket_timeout=COMMAND_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
    )


def redis_errors() -> tuple[type[Exception], ...]:
    """What a failed Redis call raises, for an ``except``: only code that holds a client
    (so has imported redis-py already) calls it."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)
