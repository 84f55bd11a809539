"""SQLite's search index, kept in batches: a background job that indexes the new events a
second after the events stream moves (``SearchStore.index_pending``). One FTS5 write per
batch instead of one per event keeps the index off the send path; a search indexes what is
left first, so it never misses an event stored before it."""

from __future__ import annotations

import asyncio

from homeserver.core.streams import Stream
from homeserver.storage.search import SearchStore
from homeserver.wakeups.bus import Bus, Wakeup

INDEX_EVERY_S = 1.0  # the events of this long share one write to the index


class SearchIndexer:
    def __init__(self, store: SearchStore, bus: Bus) -> None:
        self._store = store
        self._moved = asyncio.Event()
        self._moved.set()  # at start: what the last run left (or events a tool wrote)
        bus.subscribe(self._on_wakeup)

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        if wakeup.stream == Stream.EVENTS:
            self._moved.set()

    async def run(self) -> None:
        while True:
            await self._moved.wait()
            await asyncio.sleep(INDEX_EVERY_S)
            self._moved.clear()
            await self._store.index_pending()
