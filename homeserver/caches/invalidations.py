"""Caches that every worker keeps and that must agree (access tokens, ignore lists, push
rules, the memberships kept for syncs), kept in agreement through a persisted stream.

A worker that changes what such a cache holds drops its own copy at once and appends
(cache, key) rows to ``cache_invalidations``; every worker reads the rows after its cursor
on a wake-up (Redis pub/sub, with ``redis.url``) and on a short poll (``poll_s``), and drops
what they name. A lost wake-up delays a drop by at most the poll, never keeps a stale value.

A reader that filled a cache from the database while a drop of that cache arrived must not
keep what it read (it may be older than the drop): ``generation`` moves on each drop, and a
reader caches only if it did not move during its read.

Positions come from a sequence: a row may commit after a higher one (two writers). The
cursor stops below such a gap, rows above it are read again until it fills, and a gap
that never fills (a rolled-back insert) is passed after ``GAP_TIMEOUT_S``. Dropping twice
is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from homeserver.core.clock import Clock
from homeserver.core.redis import redis_errors
from homeserver.storage.cache_invalidations import CacheInvalidationStore

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

# How often a worker reads the stream without a wake-up.
POLL_S = 1.0
# Rows read at once.
BATCH = 1000
# A position missing below rows already read is waited for this long, then passed.
GAP_TIMEOUT_S = 60.0
# Rows are kept this long (every worker has read them many times over), then pruned.
KEEP_MS = 3_600_000
PRUNE_INTERVAL_S = 600.0
# A lost Redis connection (wake-ups) is tried again after this pause.
REDIS_RETRY_S = 2.0


# The caches kept in agreement, by name (each registered by its owner).
TOKENS = "access_tokens"
IGNORED_USERS = "ignored_users"
PUSH_RULES = "push_rules"
# The memberships kept for syncs (storage/rooms.py), by user; and by room (a purge).
SYNC_MEMBERSHIPS = "sync_memberships"
SYNC_MEMBERSHIPS_OF_ROOM = "sync_memberships_of_room"


@dataclass(slots=True)
class _Cache:
    drop: Callable[[str], object]
    clear: Callable[[], None]
    generation: int = 0


class CacheInvalidations:
    def __init__(
        self,
        store: CacheInvalidationStore,
        clock: Clock,
        *,
        redis: Redis | None = None,
        channel: str = "cache_invalidations",
        poll_s: float = POLL_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._redis = redis
        self._channel = channel
        self.poll_s = poll_s
        self._caches: dict[str, _Cache] = {}
        # Every position up to here is applied (or was given up as a gap).
        self._cursor: int | None = None
        # Positions above the cursor applied already, and gaps below them, with when each
        # was first seen.
        self._applied_above: set[int] = set()
        self._gaps: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._poll_lock = asyncio.Lock()
        # Rows of other workers applied here (metrics, tests).
        self.applied = 0

    def register(
        self, cache: str, drop: Callable[[str], object], clear: Callable[[], None]
    ) -> None:
        """``drop(key)`` forgets one key of ``cache``; ``clear()`` forgets it all (at start,
        where the stream's past is not read)."""
        self._caches[cache] = _Cache(drop, clear)

    def generation(self, cache: str) -> int:
        """Moves on every drop of ``cache``: read it before a database read, and keep what
        the read found only if it has not moved since."""
        return self._caches[cache].generation

    async def invalidate(self, cache: str, keys: Iterable[str]) -> None:
        """``keys`` of ``cache`` changed (committed): dropped here now, and on every worker
        from the stream. Call after the change is committed."""
        keys = list(keys)
        if not keys:
            return
        self._drop(cache, keys)
        await self._store.append(cache, keys, self._clock.now_ms())
        if self._redis is not None:
            try:
                await self._redis.publish(self._channel, cache)
            except redis_errors():
                pass  # the others' poll reads it

    def _drop(self, cache: str, keys: Iterable[str]) -> None:
        entry = self._caches.get(cache)
        if entry is None:
            return
        entry.generation += 1
        for key in keys:
            entry.drop(key)

    # --- the job (every worker) ------------------------------------------------------------

    async def run(self) -> None:
        """Read the stream on each wake-up and poll, for ever."""
        listener = asyncio.create_task(self._listen()) if self._redis is not None else None
        try:
            while True:
                self._wake.clear()
                await self.poll_once()
                try:
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    async def poll_once(self) -> None:
        """Apply the rows not applied yet."""
        async with self._poll_lock:
            if self._cursor is None:
                # Nothing before now is read: whatever a cache holds may predate it.
                self._cursor = await self._store.last_position()
                for entry in self._caches.values():
                    entry.generation += 1
                    entry.clear()
                return
            while True:
                rows = await self._store.since(self._cursor, BATCH)
                for position, cache, key in rows:
                    if position not in self._applied_above:
                        self._applied_above.add(position)
                        self._drop(cache, (key,))
                        self.applied += 1
                self._advance()
                if len(rows) < BATCH:
                    return

    def _advance(self) -> None:
        assert self._cursor is not None
        now = time.monotonic()
        while self._applied_above:
            following = self._cursor + 1
            if following in self._applied_above:
                self._applied_above.discard(following)
                self._gaps.pop(following, None)
                self._cursor = following
                continue
            # A gap below rows already read: wait for it a while, then pass it.
            first_seen = self._gaps.setdefault(following, now)
            if now - first_seen < GAP_TIMEOUT_S:
                return
            logger.warning("cache invalidation gap passed", extra={"position": following})
            self._gaps.pop(following)
            self._cursor = following

    async def _listen(self) -> None:
        """Wake the poll when another worker announces rows (Redis pub/sub)."""
        assert self._redis is not None
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._wake.set()  # (re)connected: read what was missed
                while True:
                    message = await pubsub.get_message(timeout=self.poll_s)
                    if message is not None:
                        self._wake.set()
            except redis_errors():
                await asyncio.sleep(REDIS_RETRY_S)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except redis_errors():
                    pass

    async def run_pruner(self) -> None:
        """Drop old rows now and then (a singleton job)."""
        while True:
            await self._store.prune(self._clock.now_ms() - KEEP_MS)
            await asyncio.sleep(PRUNE_INTERVAL_S)
