"""Other servers' media for our clients: what the media service asks federation, and the
one fetch that concurrent requests for the same media share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from homeserver.federation.remote_media import RemoteFile

T = TypeVar("T")

__all__ = ["RemoteFile", "RemoteMediaSource", "SingleFlight"]


class RemoteMediaSource(Protocol):
    """Fetches ``mxc://server_name/media_id`` from its server (``FederationMediaFetcher``).
    Raises MatrixError: 404 not found, 502 unreachable or too large, 504 not yet uploaded."""

    async def fetch(
        self, server_name: str, media_id: str, *, max_bytes: int, timeout_ms: int
    ) -> RemoteFile: ...


class SingleFlight(Generic[T]):
    """Runs one task per key at a time; callers that ask meanwhile await the same result.
    A caller that goes away does not cancel the task the others wait on."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, key: tuple[str, str], make: Callable[[], Awaitable[T]]) -> T:
        task = self._tasks.get(key)
        if task is None:

            async def wrapped() -> T:
                return await make()

            task = asyncio.create_task(wrapped())
            self._tasks[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, str], task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away
