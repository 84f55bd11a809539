"""The bus: how one worker tells every worker that a stream moved.

A ``Wakeup`` carries a stream, a position and who is concerned, never event data: the
database is the truth, so a lost wake-up costs latency, not a message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from homeserver.core.streams import Stream


@dataclass(frozen=True, slots=True)
class Wakeup:
    stream: Stream
    position: int
    room_id: str | None = None
    user_ids: tuple[str, ...] = ()
    # Every position of the stream up to this one is committed, as the publisher knew when it
    # published (several writers: a position may commit before a lower one). None: the
    # position itself (one writer, positions commit in order).
    upto: int | None = None


Subscriber = Callable[[Wakeup], Awaitable[None]]
# Called when wake-ups may have been lost (the bus reconnected): read the database again.
Resync = Callable[[], Awaitable[None]]


class Bus(Protocol):
    async def publish(self, wakeup: Wakeup) -> None: ...

    def subscribe(self, subscriber: Subscriber) -> None: ...

    def on_resync(self, callback: Resync) -> None: ...


class InMemoryBus:
    """One process: publishing calls every subscriber in turn."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    async def publish(self, wakeup: Wakeup) -> None:
        for subscriber in self._subscribers:
            await subscriber(wakeup)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def on_resync(self, callback: Resync) -> None:
        """Nothing is ever lost in one process: never called."""
