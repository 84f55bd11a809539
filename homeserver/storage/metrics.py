"""What a metrics scrape reads from the database: the depth of the pushers' queues."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import push_queue, pushers


@dataclass(frozen=True, slots=True)
class PusherQueues:
    """The queued pushes of one kind of pusher (http, email)."""

    kind: str
    queued: int  # rows waiting, all pushers of the kind
    pushers: int  # pushers with at least one
    deepest: int  # the longest queue of one pusher
    backing_off: int  # pushers whose last attempts failed (waiting to try again)


_PER_PUSHER = (
    sa.select(push_queue.c.pusher_id, sa.func.count().label("n"))
    .group_by(push_queue.c.pusher_id)
    .subquery()
)
_QUEUES = (
    sa.select(
        pushers.c.kind,
        sa.func.coalesce(sa.func.sum(_PER_PUSHER.c.n), 0).label("queued"),
        sa.func.count(_PER_PUSHER.c.pusher_id).label("pushers"),
        sa.func.coalesce(sa.func.max(_PER_PUSHER.c.n), 0).label("deepest"),
        sa.func.count().filter(pushers.c.attempts > 0).label("backing_off"),
    )
    .select_from(pushers.outerjoin(_PER_PUSHER, _PER_PUSHER.c.pusher_id == pushers.c.id))
    .group_by(pushers.c.kind)
)


class MetricsStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def pusher_queues(self) -> list[PusherQueues]:
        async with self._db.read() as conn:
            rows = (await conn.execute(_QUEUES)).all()
        return [
            PusherQueues(r.kind, int(r.queued), int(r.pushers), int(r.deepest), int(r.backing_off))
            for r in rows
        ]
