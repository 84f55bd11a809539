"""The last access of local media, recorded cheaply (issue 22): a download or thumbnail
marks the media in memory, at most once an hour per media on this worker, and a background
job writes the marks every minute in one statement. Media retention reads them.

A worker that stops writes what it holds (MediaService.close); one that dies loses at
most a minute of marks, which retention only sees as media a little older than it is.
"""

from __future__ import annotations

import asyncio
import logging

from homeserver.core.clock import Clock
from homeserver.storage.media_retention import MediaAccessStore

logger = logging.getLogger(__name__)

# A media fetched again within this time is not marked again.
ACCESS_GRANULARITY_MS = 3600 * 1000
FLUSH_INTERVAL_S = 60.0


class AccessRecorder:
    def __init__(self, store: MediaAccessStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        # When this worker last marked each media (marks older than the granularity go at
        # each flush, so this holds the media fetched within the last hour).
        self._marked: dict[str, int] = {}
        self._pending: set[str] = set()

    def touch(self, media_id: str) -> None:
        """``media_id`` was downloaded or thumbnailed now."""
        now = self._clock.now_ms()
        last = self._marked.get(media_id)
        if last is not None and now - last < ACCESS_GRANULARITY_MS:
            return
        self._marked[media_id] = now
        self._pending.add(media_id)

    async def flush(self) -> None:
        """Write the pending marks, all at the current time."""
        now = self._clock.now_ms()
        cutoff = now - ACCESS_GRANULARITY_MS
        self._marked = {m: ts for m, ts in self._marked.items() if ts > cutoff}
        if not self._pending:
            return
        pending, self._pending = self._pending, set()
        try:
            await self._store.record_access(pending, now)
        except BaseException:
            self._pending |= pending  # the next flush tries again
            raise

    async def run(self) -> None:
        """The background job: flush every minute, for ever."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()
