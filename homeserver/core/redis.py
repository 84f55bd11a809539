"""The Redis client of a worker, when the config names one (``redis.url``): shared by the
workers of a deployment for what must agree across them (rate limits)."""

from __future__ import annotations

from redis.asyncio import Redis

from homeserver.core.config import HomeserverConfig

# A command that takes longer fails: what waits on Redis (a rate limit) goes on without it
# rather than stall the request.
COMMAND_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 0.5


def connect(config: HomeserverConfig) -> Redis | None:
    """A client of ``config.redis.url`` (connecting on first use), or None without one."""
    if config.redis.url is None:
        return None
    return Redis.from_url(
        config.redis.url,
        socket_timeout=COMMAND_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
    )
