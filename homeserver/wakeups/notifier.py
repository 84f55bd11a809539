"""Wakes the long-polls waiting for a user or a room when the bus says a stream moved."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

from homeserver.core.pool_guard import check_not_holding
from homeserver.core.streams import Stream
from homeserver.wakeups.bus import Bus, Wakeup

logger = logging.getLogger(__name__)

# Wake-ups held until the positions below theirs are committed (several writers); past
# this many, every listener is woken instead (each reads the database from its token).
MAX_PENDING = 10_000
# A position that became committed without a wake-up saying so (a lower one committed
# silently, or rolled back) is announced after this pause, unless a wake-up did meanwhile.
ANNOUNCE_AFTER_S = 0.02

Positions = Callable[[], Awaitable[dict[Stream, int]]]
Persisted = Callable[[Stream], "int | None"]


class Listener:
    """One waiting request. ``wait`` returns True when woken, False on timeout (or when
    the notifier is closing: the server is shutting down)."""

    __slots__ = ("_event", "closing")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closing = False

    def wake(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, timeout_s: float) -> bool:
        # A wait may be long: a pooled connection held across it is kept from everyone else.
        check_not_holding("a wake-up")
        if self.closing:
            return False
        if self._event.is_set():
            return True
        try:
            # asyncio.timeout, not wait_for: wait_for can swallow a cancellation (3.11).
            async with asyncio.timeout(timeout_s):
                await self._event.wait()
        except TimeoutError:
            return False
        return not self.closing


class Notifier:
    """``positions`` reads the committed positions from the database (after the bus lost
    wake-ups); ``persisted`` gives how far a stream is committed as this worker knows it
    (several writers on PostgreSQL; None or returning None: positions commit in order)."""

    def __init__(
        self, bus: Bus, positions: Positions | None = None, persisted: Persisted | None = None
    ) -> None:
        self._bus = bus
        self._positions = positions
        self._persisted = persisted
        # Wake-ups above the committed position of their stream, held until it reaches them.
        self._pending: dict[Stream, list[Wakeup]] = {}
        self._pending_count = 0
        # The highest committed position of each stream this worker has told the others.
        self._announced: dict[Stream, int] = {}
        self._announcing: set[Stream] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_user: defaultdict[str, set[Listener]] = defaultdict(set)
        self._by_room: defaultdict[str, set[Listener]] = defaultdict(set)
        # The highest position of each stream known to be committed: announced by a wake-up
        # (every position is announced after its commit, and positions commit in order) or
        # read from the database (``learn``).
        self._committed: dict[Stream, int] = {}
        self.closing = False
        # For the metrics (read at a scrape): wake-ups received, listeners woken by them.
        self.wakeups_received = 0
        self.listeners_woken = 0
        bus.subscribe(self._on_wakeup)
        bus.on_resync(self.resync)

    def close(self) -> None:
        """At shut-down: every waiting request, and every later one, stops waiting at once
        (a long-poll answers with what it has; a WebSocket closes)."""
        self.closing = True
        listeners = {listener for group in self._by_user.values() for listener in group}
        for group in self._by_room.values():
            listeners.update(group)
        for listener in listeners:
            listener.closing = True
            listener.wake()

    def committed(self) -> dict[Stream, int] | None:
        """A copy of the highest committed position of each stream known here; None until
        every stream's is known (``learn`` positions read from the database first)."""
        if len(self._committed) < len(Stream):
            return None
        return dict(self._committed)

    def learn(self, positions: dict[Stream, int]) -> None:
        """Positions read from the database, committed: known from now on."""
        for stream, position in positions.items():
            self._raise(stream, position)

    def _raise(self, stream: Stream, position: int) -> None:
        if position > self._committed.get(stream, -1):
            self._committed[stream] = position
            if stream in self._pending:
                self._release(stream, position)

    def _release(self, stream: Stream, committed: int) -> None:
        held = self._pending[stream]
        due = [w for w in held if w.position <= committed]
        if not due:
            return
        rest = [w for w in held if w.position > committed]
        if rest:
            self._pending[stream] = rest
        else:
            del self._pending[stream]
        self._pending_count -= len(due)
        for wakeup in due:
            self._wake(wakeup)

    def _hold(self, wakeup: Wakeup) -> None:
        if self._pending_count >= MAX_PENDING:
            logger.warning("too many held wake-ups: waking every listener")
            self._pending.clear()
            self._pending_count = 0
            self._wake_all()
            return
        self._pending.setdefault(wakeup.stream, []).append(wakeup)
        self._pending_count += 1

    def advanced(self, stream: Stream, upto: int) -> None:
        """This worker found ``stream`` committed up to ``upto`` (its database handle, after
        its writes): known here at once, and told to the other workers unless a wake-up
        carries it soon (one normally follows a write)."""
        self._raise(stream, upto)
        if upto > self._announced.get(stream, -1) and stream not in self._announcing:
            self._announcing.add(stream)
            loop = asyncio.get_running_loop()
            loop.call_later(ANNOUNCE_AFTER_S, self._start_announce, stream)

    def _start_announce(self, stream: Stream) -> None:
        task = asyncio.ensure_future(self._announce(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, stream: Stream) -> None:
        self._announcing.discard(stream)
        upto = self._committed.get(stream)
        if upto is None or upto <= self._announced.get(stream, -1) or self.closing:
            return
        self._announced[stream] = upto
        try:
            await self._bus.publish(Wakeup(stream, upto, upto=upto))
        except Exception:
            logger.exception("announcing a position failed", extra={"stream": stream})

    async def resync(self) -> None:
        """Wake-ups may have been lost (the bus reconnected): read the committed positions
        again and wake every listener, which computes from its own token."""
        if self._positions is not None:
            self.learn(await self._positions())
        self._wake_all()

    def _wake_all(self) -> None:
        listeners = {listener for group in self._by_user.values() for listener in group}
        for group in self._by_room.values():
            listeners.update(group)
        for listener in listeners:
            listener.wake()
        self.listeners_woken += len(listeners)

    async def notify(
        self,
        stream: Stream,
        position: int,
        *,
        room_id: str | None = None,
        user_ids: Iterable[str] = (),
    ) -> None:
        check_not_holding("the bus")  # Redis: the network
        upto = self._persisted(stream) if self._persisted is not None else None
        if upto is not None and upto > self._announced.get(stream, -1):
            self._announced[stream] = upto
        await self._bus.publish(Wakeup(stream, position, room_id, tuple(user_ids), upto))

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        self.wakeups_received += 1
        upto = wakeup.position if wakeup.upto is None else wakeup.upto
        self._raise(wakeup.stream, upto)
        if wakeup.room_id is None and not wakeup.user_ids:
            return  # a position announced, for no one in particular
        if wakeup.position > self._committed.get(wakeup.stream, -1):
            self._hold(wakeup)  # a lower position is still being written somewhere
            return
        self._wake(wakeup)

    def _wake(self, wakeup: Wakeup) -> None:
        targets: set[Listener] = set()
        if wakeup.room_id is not None:
            targets.update(self._by_room.get(wakeup.room_id, ()))
        for user_id in wakeup.user_ids:
            targets.update(self._by_user.get(user_id, ()))
        for listener in targets:
            listener.wake()
        self.listeners_woken += len(targets)

    def waiting(self) -> int:
        """How many requests wait for a wake-up now (each listens for one user)."""
        return sum(len(group) for group in self._by_user.values())

    def listen(self, user_id: str, room_ids: Iterable[str]) -> Listener:
        listener = Listener()
        listener.closing = self.closing
        self._by_user[user_id].add(listener)
        for room_id in room_ids:
            self._by_room[room_id].add(listener)
        return listener

    def unlisten(self, listener: Listener, user_id: str, room_ids: Iterable[str]) -> None:
        _discard(self._by_user, user_id, listener)
        for room_id in room_ids:
            _discard(self._by_room, room_id, listener)


def _discard(index: defaultdict[str, set[Listener]], key: str, listener: Listener) -> None:
    listeners = index.get(key)
    if listeners is not None:
        listeners.discard(listener)
        if not listeners:
            del index[key]
