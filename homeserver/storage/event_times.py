"""Events found by the time their server gave them (GET /rooms/{roomId}/timestamp_to_event)."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import BACKFILL_BASE, events

# Events never served to clients (outliers, soft-failed) are numbered at or below 0, above
# the backfilled ones (served, numbered downwards from BACKFILL_BASE).
_SERVED = sa.or_(events.c.stream_ordering > 0, events.c.stream_ordering <= BACKFILL_BASE)


class EventTimeStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def closest_events(
        self, room_id: str, ts: int, forwards: bool, limit: int
    ) -> Sequence[tuple[str, int, int]]:
        """Up to ``limit`` served events of the room nearest ``ts``: at or after it
        (``forwards``) or at or before it, nearest first, as (event_id, origin_server_ts,
        stream_ordering)."""
        cols = (events.c.event_id, events.c.origin_server_ts, events.c.stream_ordering)
        query = sa.select(*cols).where(events.c.room_id == room_id, _SERVED)
        if forwards:
            query = query.where(events.c.origin_server_ts >= ts).order_by(
                events.c.origin_server_ts.asc(), events.c.stream_ordering.asc()
            )
        else:
            query = query.where(events.c.origin_server_ts <= ts).order_by(
                events.c.origin_server_ts.desc(), events.c.stream_ordering.desc()
            )
        async with self._db.read() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]
