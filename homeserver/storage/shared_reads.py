"""Reads whose answer never changes, done once for everyone who asks.

A message to a big room wakes every member's long-poll at once, and each computes its sync
between the same two positions of the events stream. What lies in a committed range of a
stream never changes (positions commit in order, and a sync never reads past what is
committed), so such a read can be kept and handed to every member: one statement instead of
one per member. Concurrent callers of the same key wait for the first one's read (on
PostgreSQL the woken syncs interleave at each statement) instead of each reading it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache

from homeserver.core.pool_guard import before_waiting

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Failed:
    """What waiters get when the read they waited for failed or was cancelled."""


_FAILED = _Failed()


# Every SharedReads of the process, for the metrics: what a scrape reads (shared_read_stats).
_ALL: weakref.WeakSet[SharedReads[object, object]] = weakref.WeakSet()


def shared_read_stats() -> dict[str, tuple[int, int, int]]:
    """Per name, the reads answered from the cache, by waiting for another caller's read,
    and by a read of their own, over every SharedReads of the process."""
    stats: dict[str, tuple[int, int, int]] = {}
    for reads in list(_ALL):
        hits, shared, misses = stats.get(reads.name, (0, 0, 0))
        stats[reads.name] = (hits + reads.hits, shared + reads.shared, misses + reads.misses)
    return stats


class SharedReads(Generic[K, V]):
    """A bounded cache of immutable reads; one read at a time per key."""

    def __init__(
        self, maxsize: int, getsizeof: Callable[[V], int] | None = None, name: str = "other"
    ) -> None:
        """``maxsize`` answers, or of ``getsizeof`` weight (each answer's, 1 without);
        ``name`` labels its counts in the metrics."""
        self._done: LRUCache[K, V] = LRUCache(maxsize=maxsize, getsizeof=getsizeof)
        self._reading: dict[K, asyncio.Future[V | _Failed]] = {}
        self.name = name
        self.hits = self.shared = self.misses = 0
        _ALL.add(self)  # type: ignore[arg-type]  # counted whatever its key and value

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """The kept answer for ``key``, or ``read()``'s, which is then kept."""
        while True:
            try:
                value = self._done[key]
            except KeyError:
                pass
            else:
                self.hits += 1
                return value
            pending = self._reading.get(key)
            if pending is None:
                break
            # Not holding a connection meanwhile: the reader may be waiting for one.
            await before_waiting("another request's read")
            found = await asyncio.shield(pending)
            if not isinstance(found, _Failed):
                self.shared += 1
                return found
            # The reader failed or was cancelled: the first waiter to get here reads.
        self.misses += 1
        future: asyncio.Future[V | _Failed] = asyncio.get_running_loop().create_future()
        self._reading[key] = future
        try:
            value = await read()
        except BaseException:
            future.set_result(_FAILED)
            raise
        finally:
            del self._reading[key]
        self._done[key] = value
        future.set_result(value)
        return value


class RangeReads(Generic[V]):
    """Shared reads of a stream between two committed positions ``(after, upto]``, for
    ranges of at most ``longest`` positions: an empty range is ``empty`` without a read, a
    longer one None (the caller asks about what concerns it instead)."""

    def __init__(
        self,
        maxsize: int,
        longest: int,
        empty: V,
        getsizeof: Callable[[V], int] | None = None,
        name: str = "other",
    ) -> None:
        self._reads: SharedReads[tuple[int, int], V] = SharedReads(maxsize, getsizeof, name)
        self._longest = longest
        self._empty = empty

    async def get(
        self, after: int, upto: int, read: Callable[[int, int], Awaitable[V]]
    ) -> V | None:
        if upto <= after:
            return self._empty
        if upto - after > self._longest:
            return None
        return await self._reads.get((after, upto), lambda: read(after, upto))
