"""Token-bucket rate limits keyed by (action, user or IP address).

Each action has a bucket of ``burst`` tokens per key that refills at ``per_second``; a request
takes one token or is refused with ``M_LIMIT_EXCEEDED`` and the time until one is back.

With ``redis.url`` set the buckets live in Redis, shared by every worker (one Lua script
refills and takes atomically), so N workers do not give N times the allowance. Without it
they live in memory, per worker. If Redis cannot be reached a worker falls back to its own
buckets (fail open: no request is refused because Redis is down, each worker limits alone,
a warning is logged) and tries Redis again after ``REDIS_RETRY_S``.
"""

from __future__ import annotations

import logging
import math
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache

from homeserver.core.clock import Clock
from homeserver.core.config import RateLimit, RateLimitsConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.pool_guard import before_waiting
from homeserver.core.redis import redis_errors

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

# Buckets kept per action; past this the least recently refilled go first. A dropped bucket
# is a full one, so an attacker rotating keys gains nothing he would not have with new keys.
MAX_KEYS_PER_ACTION = 100_000
# After Redis failed, the worker limits alone for this long before it asks Redis again.
REDIS_RETRY_S = 1.0
# At most one warning per interval while Redis is unreachable.
REDIS_LOG_INTERVAL_S = 10.0

# KEYS[1]: the bucket; ARGV: burst, tokens per second, now (ms). Refills the bucket for the
# time since it was last touched, takes a token if there is one, and keeps the bucket for
# as long as it takes to refill (a bucket gone is a full one). Returns {1 if taken, the
# tokens left as a string} (a Lua number would come back truncated to an integer).
TAKE_SCRIPT = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = burst
  last = now
end
if now > last then
  tokens = math.min(burst, tokens + (now - last) / 1000 * rate)
  last = now
end
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(last))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, tostring(tokens)}
"""


class Action(StrEnum):
    """What is limited; each value names its section of ``rate_limits`` in the config."""

    LOGIN = "login"
    REGISTRATION = "registration"
    MESSAGE = "message"
    JOIN = "join"
    THREEPID_VALIDATION = "threepid_validation"
    MEDIA_CREATE = "media_create"
    PUBLIC_ROOMS = "public_rooms"


class SharedBuckets:
    """Buckets in Redis, shared by the workers that use the same ``prefix``."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(TAKE_SCRIPT)
        self._down_until = 0.0
        self._logged_at = -math.inf

    async def take(self, key: str, limit: RateLimit, now_ms: int) -> float | None:
        """Take a token of ``key``'s bucket: the tokens left (negative: refused, by as many
        as are missing), or None when Redis could not answer."""
        if time.monotonic() < self._down_until:
            return None
        await before_waiting("Redis")
        try:
            taken, tokens = await self._script(
                keys=[self._prefix + key], args=[limit.burst, limit.per_second, now_ms]
            )
        except redis_errors() as e:
            self._down_until = time.monotonic() + REDIS_RETRY_S
            if time.monotonic() - self._logged_at >= REDIS_LOG_INTERVAL_S:
                self._logged_at = time.monotonic()
                logger.warning(
                    "Redis unreachable: rate limits are per worker until it is back",
                    extra={"error": repr(e)},
                )
            return None
        left = float(tokens)
        return left if int(taken) else left - 1


class RateLimiter:
    def __init__(
        self,
        config: RateLimitsConfig,
        clock: Clock,
        redis: Redis | None = None,
        prefix: str = "ratelimit:",
    ) -> None:
        self._config = config
        self._clock = clock
        self._shared = SharedBuckets(redis, prefix) if redis is not None else None
        self._buckets: dict[Action, TTLCache[str, tuple[float, int]]] = {}
        # Per-key limits an administrator set (the admin API's override_ratelimit), with
        # their own buckets: a few keys, never evicted while the override stands. ``None``:
        # not limited at all.
        self._overrides: dict[tuple[Action, str], RateLimit | None] = {}
        self._override_buckets: dict[tuple[Action, str], tuple[float, int]] = {}
        for action in Action:
            limit = self.limit_of(action)
            # A bucket untouched for the time it takes to refill is full: forget it.
            self._buckets[action] = TTLCache(
                maxsize=MAX_KEYS_PER_ACTION, ttl=limit.burst / limit.per_second, timer=self._now_s
            )

    def _now_s(self) -> float:
        return self._clock.now_ms() / 1000

    def limit_of(self, action: Action) -> RateLimit:
        limit: RateLimit = getattr(self._config, action.value)
        return limit

    def set_overrides(self, action: Action, overrides: dict[str, RateLimit | None]) -> None:
        """Replace the per-key limits of ``action`` (``None``: that key is not limited)."""
        for known in [k for k in self._overrides if k[0] == action]:
            if known[1] not in overrides or overrides[known[1]] != self._overrides[known]:
                self._overrides.pop(known)
                self._override_buckets.pop(known, None)
        for key, limit in overrides.items():
            self._overrides[(action, key)] = limit

    async def check(self, action: Action, key: str, *, exempt: bool = False) -> None:
        """Take a token for ``key``; else ``M_LIMIT_EXCEEDED`` with ``retry_after_ms``."""
        if not self._config.enabled or exempt:
            return
        if (action, key) in self._overrides:
            override = self._overrides[(action, key)]
            if override is not None:
                await self._take(
                    override, self._override_buckets, (action, key), f"o:{action}:{key}"
                )
            return
        await self._take(self.limit_of(action), self._buckets[action], key, f"{action}:{key}")

    async def _take(self, limit: RateLimit, buckets: Any, key: object, shared_key: str) -> None:
        now_ms = self._clock.now_ms()
        if self._shared is not None:
            left = await self._shared.take(shared_key, limit, now_ms)
            if left is not None:
                if left < 0:
                    raise _exceeded(-left, limit)
                return
        tokens, last_ms = buckets.get(key, (float(limit.burst), now_ms))
        tokens = min(
            float(limit.burst), tokens + max(0, now_ms - last_ms) / 1000 * limit.per_second
        )
        if tokens < 1:
            buckets[key] = (tokens, now_ms)
            raise _exceeded(1 - tokens, limit)
        buckets[key] = (tokens - 1, now_ms)


def _exceeded(missing: float, limit: RateLimit) -> MatrixError:
    """Refused, ``missing`` tokens short of one."""
    retry_after_ms = math.ceil(missing / limit.per_second * 1000)
    return MatrixError(
        Codes.LIMIT_EXCEEDED, "Too many requests, slow down", retry_after_ms=retry_after_ms
    )
