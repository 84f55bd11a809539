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


Subscriber = Callable[[Wakeup], Awaitable[None]]


class Bus(Protocol):
    async def publish(self, wakeup: Wakeup) -> None: ...

    def subscribe(self, subscriber: Subscriber) -> None: ...


class InMemoryBus:
    """One process: publishing calls every subscriber in turn."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    async def publish(self, wakeup: Wakeup) -> None:
        for subscriber in self._subscribers:
            await subscriber(wakeup)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)
