"""The cache invalidation stream (``cache_invalidations``): rows of (position, cache, key)
appended as a worker drops something every worker may keep, read by the others."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import cache_invalidations

_c = cache_invalidations.c


class CacheInvalidationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, cache: str, keys: Iterable[str], now_ms: int) -> None:
        rows = [{"cache": cache, "key": key, "ts": now_ms} for key in keys]
        if not rows:
            return
        async with self._db.write() as conn:
            await conn.execute(sa.insert(cache_invalidations), rows)

    async def last_position(self) -> int:
        async with self._db.read() as conn:
            found = (await conn.execute(sa.select(sa.func.max(_c.position)))).scalar()
        return int(found or 0)

    async def since(self, position: int, limit: int) -> list[tuple[int, str, str]]:
        """Rows after ``position``, oldest first, at most ``limit``."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(_c.position, _c.cache, _c.key)
                    .where(_c.position > position)
                    .order_by(_c.position)
                    .limit(limit)
                )
            ).all()
        return [(int(p), str(c), str(k)) for p, c, k in rows]

    async def prune(self, before_ts: int) -> int:
        """Drop rows older than ``before_ts`` (every worker read them long ago)."""
        async with self._db.write() as conn:
            result = await conn.execute(sa.delete(cache_invalidations).where(_c.ts < before_ts))
        return int(result.rowcount or 0)
