"""Wakes the long-polls waiting for a user or a room when the bus says a stream moved."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable

from homeserver.core.pool_guard import check_not_holding
from homeserver.core.streams import Stream
from homeserver.wakeups.bus import Bus, Wakeup


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
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
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

    async def notify(
        self,
        stream: Stream,
        position: int,
        *,
        room_id: str | None = None,
        user_ids: Iterable[str] = (),
    ) -> None:
        check_not_holding("the bus")  # Redis: the network
        await self._bus.publish(Wakeup(stream, position, room_id, tuple(user_ids)))

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        self._raise(wakeup.stream, wakeup.position)
        targets: set[Listener] = set()
        if wakeup.room_id is not None:
            targets.update(self._by_room.get(wakeup.room_id, ()))
        for user_id in wakeup.user_ids:
            targets.update(self._by_user.get(user_id, ()))
        for listener in targets:
            listener.wake()
        self.wakeups_received += 1
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
