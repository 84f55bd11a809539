"""What media retention reads and writes (issue 22): the last access of local media; the
leases of singleton jobs are ``storage/leases.py`` (re-exported here)."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.leases import JobLeaseStore
from homeserver.storage.schema import media

__all__ = ["JobLeaseStore", "MediaAccessStore"]


class MediaAccessStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_access(self, media_ids: Collection[str], now_ms: int) -> None:
        """These media were downloaded or thumbnailed at ``now_ms`` (one statement; a
        later time already written stays)."""
        if not media_ids:
            return
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(media)
                .where(
                    media.c.media_id.in_(sorted(media_ids)),
                    sa.or_(media.c.last_access_ts.is_(None), media.c.last_access_ts < now_ms),
                )
                .values(last_access_ts=now_ms)
            )
