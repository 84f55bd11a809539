"""Unread counts (spec: "Receiving notifications"), from the push actions of each event.

An event counts for a user when their push rules made it notify them (``highlight_count``:
with the highlight tweak) and it lies after their read mark: the later of their unthreaded
``m.read`` / ``m.read.private`` receipt and their own latest event in the room, and, for an
event in a thread (the main timeline is the thread "main"), their receipt in that thread.
Per-thread counts (``unread_thread_notifications``) split the room's count by thread.
Events from users they ignore never count (push actions are not even made for them; these
skip the ones made before the user ignored the sender).

A sync keeps each user's counts with the positions they were counted at, and a later sync
moves them on instead of counting again: a message to a room wakes every member, and each
would otherwise count all its unread events. Up to a later position, a room's counts grow
by the user's push actions in between (read once for everyone woken), unless the user's
read marks there may have moved: a receipt of theirs, or an event they sent. Such a room is
counted again, as is a room not counted yet. The counts of one sync are those up to its
events position (push actions and own events up to there) with the latest receipts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cachetools import LRUCache

from homeserver.accounts.ignored import IgnoreLists
from homeserver.core.clock import Clock
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.events import EventStore
from homeserver.storage.push import PushStore, ThreadUnread
from homeserver.storage.receipts import ReceiptStore

MAIN_THREAD = "main"
# Rooms whose counts are kept, over all users (an entry weighs its rooms; ~250 bytes a room).
KEPT_ROOMS = 100_000
# Kept counts are counted again after this long, so that an unusual order of positions
# between workers (a receipt known before the event it marks) cannot leave them wrong longer.
KEPT_MS = 300_000

Counts = Mapping[str, Mapping[str, ThreadUnread]]  # room -> thread -> counts


@dataclass(frozen=True, slots=True)
class _Kept:
    """A user's counts up to ``events`` with the receipts up to ``receipts``, by room (a
    room left out is not counted here); ``counted_ms``: when the oldest of them was counted;
    ``oldest_ts``: when the oldest push action among them was made (None: none)."""

    events: int
    receipts: int
    counted_ms: int
    oldest_ts: int | None
    rooms: Counts


_BatchKey = tuple[tuple[str, ...], int]  # rooms, position


class _CountBatch:
    """Counts asked for while a count of the same rooms up to the same position runs, by
    other users, are made together in one query once it is done: a message to a room
    wakes every member, and those whose counts are not kept (the first message after they
    came, a receipt of theirs) would each count on their own. A count asked for alone
    runs at once, in its caller's task."""

    def __init__(self, store: PushStore) -> None:
        self._store = store
        self._next: dict[_BatchKey, dict[str, asyncio.Future[Counts]]] = {}
        self._running: set[_BatchKey] = set()

    async def count(self, user_id: str, room_ids: Sequence[str], upto: int) -> Counts:
        key = (tuple(sorted(set(room_ids))), upto)
        if key not in self._running:
            self._running.add(key)
            try:
                counted = await self._store.count_unread_of([user_id], key[0], upto=upto)
            finally:
                self._done(key)
            return counted.get(user_id, {})
        batch = self._next.setdefault(key, {})
        future = batch.get(user_id)
        if future is None:
            future = batch[user_id] = asyncio.get_running_loop().create_future()
        # Shielded: a caller that goes away does not take the others' answer with it.
        return await asyncio.shield(future)

    def _done(self, key: _BatchKey) -> None:
        """A count of ``key`` ended: those who asked meanwhile are counted now, together."""
        self._running.discard(key)
        futures = self._next.pop(key, None)
        if futures:
            self._running.add(key)
            task = asyncio.create_task(self._count(key, futures))
            _running.add(task)
            task.add_done_callback(_running.discard)

    async def _count(self, key: _BatchKey, futures: dict[str, asyncio.Future[Counts]]) -> None:
        room_ids, upto = key
        try:
            counted = await self._store.count_unread_of(list(futures), room_ids, upto=upto)
        except Exception as error:  # each caller raises it
            for future in futures.values():
                future.set_exception(error)
            return
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise
        finally:
            self._done(key)
        for user_id, future in futures.items():
            future.set_result(counted.get(user_id, {}))


# Batch queries under way (asyncio keeps only weak references to tasks).
_running: set[asyncio.Task[None]] = set()


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _counts(notifications: int, highlights: int) -> JsonDict:
    return {"notification_count": notifications, "highlight_count": highlights}


class UnreadCountService:
    """Implements the sync's ``UnreadCounts``: one query for all the rooms of a response."""

    def __init__(
        self,
        store: PushStore,
        ignored: IgnoreLists,
        events: EventStore,
        receipts: ReceiptStore,
        clock: Clock,
        retention_ms: int,
    ) -> None:
        self._store = store
        self._ignored = ignored
        self._events = events
        self._receipts = receipts
        self._clock = clock
        self._retention_ms = retention_ms  # push.action_retention_ms
        self._batch = _CountBatch(store)
        self._kept: LRUCache[str, _Kept] = LRUCache(
            maxsize=KEPT_ROOMS, getsizeof=lambda kept: len(kept.rooms) + 1
        )

    async def unread_counts(
        self,
        requester: Requester,
        room_ids: Sequence[str],
        *,
        at: StreamToken,
        threads: bool = False,
    ) -> dict[str, JsonDict]:
        """Per room: ``unread_notifications``, and with ``threads`` the main timeline's only,
        the threads' in ``unread_thread_notifications`` (those with something unread).
        ``at``: a sync's (committed) positions, up to which it counts."""
        user_id = requester.user_id
        ignored = await self._ignored.ignored_users(user_id)
        found: Counts
        if ignored:
            # Ignoring someone is rare: such counts are never kept (a window's push actions
            # do not say whose events they are).
            found = await self._store.count_unread(
                user_id, room_ids, ignored, upto=at.get(Stream.EVENTS)
            )
        else:
            found = await self._kept_counts(
                user_id, room_ids, at.get(Stream.EVENTS), at.get(Stream.RECEIPTS)
            )
        out: dict[str, JsonDict] = {}
        for room_id in room_ids:
            by_thread = found.get(room_id, {})
            if not threads:
                out[room_id] = {
                    "unread_notifications": _counts(
                        sum(t.notifications for t in by_thread.values()),
                        sum(t.highlights for t in by_thread.values()),
                    )
                }
                continue
            main = by_thread.get(MAIN_THREAD)
            entry: JsonDict = {
                "unread_notifications": _counts(main.notifications, main.highlights)
                if main
                else _counts(0, 0)
            }
            in_threads = {
                thread_id: _counts(t.notifications, t.highlights)
                for thread_id, t in by_thread.items()
                if thread_id != MAIN_THREAD
            }
            if in_threads:
                entry["unread_thread_notifications"] = in_threads
            out[room_id] = entry
        return out

    async def prepare(self, requester: Requester, room_ids: Sequence[str], at: StreamToken) -> None:
        """Counts the rooms now if nothing of the user's is kept (their first long-poll here,
        after a sync that left the rooms out, or on another worker), so that the sync a
        message wakes moves the counts on instead of counting while it is awaited."""
        user_id = requester.user_id
        if not room_ids or user_id in self._kept or await self._ignored.ignored_users(user_id):
            return
        await self._kept_counts(user_id, room_ids, at.get(Stream.EVENTS), at.get(Stream.RECEIPTS))

    async def _kept_counts(
        self, user_id: str, room_ids: Sequence[str], events: int, receipts: int
    ) -> Counts:
        """The counts up to these positions: the kept ones moved on, the others counted (and
        then kept, unless newer ones were kept meanwhile)."""
        now_ms = self._clock.now_ms()
        kept = self._kept.get(user_id)
        moved_on = (
            await self._moved_on(user_id, kept, events, receipts, now_ms)
            if kept is not None
            else None
        )
        if moved_on is None:
            rooms: dict[str, Mapping[str, ThreadUnread]] = {}
            counted_ms, oldest_ts = now_ms, None
        else:
            rooms, oldest_ts = moved_on
            assert kept is not None
            counted_ms = kept.counted_ms
        missing = [room_id for room_id in room_ids if room_id not in rooms]
        if missing:
            counted = await self._batch.count(user_id, missing, events)
            for room_id in missing:
                rooms[room_id] = threads = counted.get(room_id, {})
                for thread in threads.values():
                    oldest_ts = _min(oldest_ts, thread.oldest_ts)
        latest = self._kept.get(user_id)
        if len(rooms) < KEPT_ROOMS and (
            latest is None or (latest.events <= events and latest.receipts <= receipts)
        ):
            self._kept[user_id] = _Kept(events, receipts, counted_ms, oldest_ts, rooms)
        return rooms

    async def _moved_on(
        self, user_id: str, kept: _Kept, events: int, receipts: int, now_ms: int
    ) -> tuple[dict[str, Mapping[str, ThreadUnread]], int | None] | None:
        """``kept``'s rooms with their counts up to the positions, less those whose read
        marks may have moved, and when their oldest push action was made; None when they
        cannot be moved on: too old, with a push action the pruner may have deleted (older
        than the retention), too far behind, or ahead."""
        if (
            now_ms - kept.counted_ms > KEPT_MS
            or kept.events > events
            or kept.receipts > receipts
            or (kept.oldest_ts is not None and kept.oldest_ts < now_ms - self._retention_ms)
        ):
            return None
        if kept.events == events and kept.receipts == receipts:
            return dict(kept.rooms), kept.oldest_ts
        window = await self._events.get_window(kept.events, events)
        actions = await self._store.get_action_window(kept.events, events)
        moved = await self._receipts.get_moved(kept.receipts, receipts)
        if window is None or actions is None or moved is None:
            return None
        marked = window.senders.get(user_id, frozenset()) | moved.get(user_id, frozenset())
        rooms = {
            room_id: threads for room_id, threads in kept.rooms.items() if room_id not in marked
        }
        oldest_ts = kept.oldest_ts
        for action in actions.get(user_id, ()):
            threads = rooms.get(action.room_id)
            if threads is None:
                continue
            thread = threads.get(action.thread_id)
            rooms[action.room_id] = {
                **threads,
                action.thread_id: ThreadUnread(1, int(action.highlight), action.ts)
                if thread is None
                else ThreadUnread(
                    thread.notifications + 1,
                    thread.highlights + action.highlight,
                    min(thread.oldest_ts, action.ts),
                ),
            }
            oldest_ts = _min(oldest_ts, action.ts)
        return rooms, oldest_ts

    async def total_unread(self, user_id: str, room_ids: Sequence[str]) -> int:
        """Notifications across the rooms (a push's ``counts.unread``)."""
        found = await self._store.count_unread(
            user_id, room_ids, await self._ignored.ignored_users(user_id)
        )
        return sum(t.notifications for threads in found.values() for t in threads.values())
