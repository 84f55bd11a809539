"""Media retention (issue 22): media nobody fetched within its lifetime is deleted, with its
thumbnails and stored objects (files or S3), by a background job that runs on one worker
at a time (the ``media_retention`` lease in ``job_leases``).

Local media goes by its last download or thumbnail (media_repo/access.py), else by its
upload; protected media and anyone's avatar (profile or room member) are kept, as Synapse
keeps them. Other servers' media cached here (``remote_media_lifetime_ms``) goes by its last
download through ``RemoteMediaCache`` (the admin media service, which also serves
``purge_media_cache``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from typing import Protocol

from homeserver.core.clock import Clock
from homeserver.core.config import MediaRetentionConfig
from homeserver.storage.admin_media import AdminMediaStore
from homeserver.storage.media_retention import JobLeaseStore

logger = logging.getLogger(__name__)

LEASE_NAME = "media_retention"
# Media deleted per round; the job goes on until none is left.
BATCH = 500


class MediaDeleter(Protocol):
    """The admin API's deletion (homeserver/admin/media.py): rows, then content and
    thumbnails no other media uses."""

    async def delete_media(self, media_ids: list[str]) -> list[str]: ...


class RemoteMediaCache(Protocol):
    """Other servers' media cached here: drop what was not fetched since ``before_ts``
    (rows, content and thumbnails no other media shares); the number dropped."""

    async def purge_not_accessed_since(self, before_ts: int) -> int: ...


class MediaRetention:
    def __init__(
        self,
        config: MediaRetentionConfig,
        store: AdminMediaStore,
        leases: JobLeaseStore,
        deleter: MediaDeleter,
        clock: Clock,
        remote: RemoteMediaCache | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._leases = leases
        self._deleter = deleter
        self._clock = clock
        self._remote = remote
        self._worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # When this worker last ran a round, and how many media it deleted (the admin API).
        self.last_round: tuple[int, int] | None = None

    @property
    def interval_ms(self) -> int:
        return self._config.interval_ms

    @property
    def lease_ms(self) -> int:
        """A round holds the lease until the next round is due, and one interval more."""
        return 2 * self._config.interval_ms

    @property
    def enabled(self) -> bool:
        return (
            self._config.local_media_lifetime_ms is not None
            or self._config.remote_media_lifetime_ms is not None
        )

    async def run(self) -> None:
        """The background job: a round at each interval, for ever; the lease is given up
        when the worker stops, so that a restarted one need not wait for it to lapse."""
        try:
            while True:
                await self.run_once()
                await asyncio.sleep(self._config.interval_ms / 1000)
        finally:
            try:
                await self.release()
            except Exception:
                logger.exception("media retention lease not released")

    async def run_once(self) -> int | None:
        """One round, if this worker holds the lease (held until the next round is due, so
        one worker keeps it while it lives); the number of media deleted, None without it."""
        now = self._clock.now_ms()
        if not await self._leases.claim(LEASE_NAME, self._worker, now, self.lease_ms):
            return None
        deleted = 0
        lifetime = self._config.local_media_lifetime_ms
        if lifetime is not None:
            before_ts = now - lifetime
            while True:
                ids = await self._store.media_to_delete(
                    before_ts, -1, True, by_last_access=True, limit=BATCH
                )
                if not ids:
                    break
                gone = await self._deleter.delete_media(ids)
                deleted += len(gone)
                if len(gone) < len(ids) or len(ids) < BATCH:
                    break
        remote_lifetime = self._config.remote_media_lifetime_ms
        if remote_lifetime is not None and self._remote is not None:
            deleted += await self._remote.purge_not_accessed_since(now - remote_lifetime)
        if deleted:
            logger.info("media past its lifetime deleted", extra={"count": deleted})
        self.last_round = (now, deleted)
        return deleted

    async def release(self) -> None:
        await self._leases.release(LEASE_NAME, self._worker)
