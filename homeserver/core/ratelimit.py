"""Token-bucket rate limits keyed by (action, user or IP address).

Each action has a bucket of ``burst`` tokens per key that refills at ``per_second``; a request
takes one token or is refused with ``M_LIMIT_EXCEEDED`` and the time until one is back. Buckets
live in memory, per worker: a limit is per worker, which is what a rate limit needs to be
(cheap, and it bounds what one process serves), not an exact quota across the deployment.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from cachetools import TTLCache

from homeserver.core.clock import Clock
from homeserver.core.config import RateLimit, RateLimitsConfig
from homeserver.core.errors import Codes, MatrixError

# Buckets kept per action; past this the least recently refilled go first. A dropped bucket
# is a full one, so an attacker rotating keys gains nothing he would not have with new keys.
MAX_KEYS_PER_ACTION = 100_000


class Action(StrEnum):
    """What is limited; each value names its section of ``rate_limits`` in the config."""

    LOGIN = "login"
    REGISTRATION = "registration"
    MESSAGE = "message"
    JOIN = "join"
    THREEPID_VALIDATION = "threepid_validation"
    MEDIA_CREATE = "media_create"
    PUBLIC_ROOMS = "public_rooms"


class RateLimiter:
    def __init__(self, config: RateLimitsConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
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

    def check(self, action: Action, key: str, *, exempt: bool = False) -> None:
        """Take a token for ``key``; else ``M_LIMIT_EXCEEDED`` with ``retry_after_ms``."""
        if not self._config.enabled or exempt:
            return
        if (action, key) in self._overrides:
            override = self._overrides[(action, key)]
            if override is not None:
                self._take(override, self._override_buckets, (action, key))
            return
        self._take(self.limit_of(action), self._buckets[action], key)

    def _take(self, limit: RateLimit, buckets: Any, key: object) -> None:
        now_ms = self._clock.now_ms()
        tokens, last_ms = buckets.get(key, (float(limit.burst), now_ms))
        tokens = min(
            float(limit.burst), tokens + max(0, now_ms - last_ms) / 1000 * limit.per_second
        )
        if tokens < 1:
            retry_after_ms = math.ceil((1 - tokens) / limit.per_second * 1000)
            buckets[key] = (tokens, now_ms)
            raise MatrixError(
                Codes.LIMIT_EXCEEDED, "Too many requests, slow down", retry_after_ms=retry_after_ms
            )
        buckets[key] = (tokens - 1, now_ms)
