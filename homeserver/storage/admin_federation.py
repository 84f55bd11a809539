"""What the admin API reads and does on federation destinations (issue 22): the outbound
sender's back-off per destination, the rooms shared with a destination, a back-off cleared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import events, federation_destinations, room_memberships

_fd = federation_destinations.c

DESTINATION_ORDERS: dict[str, sa.ColumnElement[Any]] = {
    "destination": _fd.destination,
    # The last failed attempt is not kept: the next retry's time orders as it does.
    "retry_last_ts": _fd.retry_at_ts,
    "retry_interval": _fd.retry_interval_ms,
    "failure_ts": _fd.retry_at_ts,
    "last_successful_stream_ordering": _fd.destination,
}


@dataclass(frozen=True, slots=True)
class DestinationRow:
    destination: str
    retry_interval_ms: int  # 0: answering
    retry_at_ts: int
    catching_up: bool


@dataclass(frozen=True, slots=True)
class DestinationRoom:
    room_id: str
    stream_ordering: int


def _row(r: Any) -> DestinationRow:
    return DestinationRow(
        str(r.destination), int(r.retry_interval_ms), int(r.retry_at_ts), bool(r.catching_up)
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class AdminFederationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_destinations(
        self, offset: int, limit: int, order_by: str, backwards: bool, search: str | None
    ) -> tuple[list[DestinationRow], int]:
        """A page of destinations and how many match; ``search``: a part of the name, in any
        case."""
        where: list[sa.ColumnElement[bool]] = []
        if search is not None:
            pattern = f"%{_escape_like(search.lower())}%"
            where.append(sa.func.lower(_fd.destination).like(pattern, escape="\\"))
        column = DESTINATION_ORDERS[order_by]
        ordering = [column.desc() if backwards else column.asc(), _fd.destination.asc()]
        query = (
            sa.select(_fd.destination, _fd.retry_interval_ms, _fd.retry_at_ts, _fd.catching_up)
            .where(*where)
            .order_by(*ordering)
            .offset(offset)
            .limit(limit)
        )
        count = sa.select(sa.func.count()).select_from(federation_destinations).where(*where)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
            total = int((await conn.execute(count)).scalar_one())
        return [_row(r) for r in rows], total

    async def get_destination(self, destination: str) -> DestinationRow | None:
        query = sa.select(
            _fd.destination, _fd.retry_interval_ms, _fd.retry_at_ts, _fd.catching_up
        ).where(_fd.destination == destination)
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _row(row)

    async def destination_rooms(
        self, destination: str, offset: int, limit: int, backwards: bool
    ) -> tuple[list[DestinationRoom], int]:
        """The rooms where a user of ``destination`` is joined, by room ID, each with the
        stream position of its newest event: a page and the count."""
        suffix = f":{destination}"
        shared = (
            sa.select(room_memberships.c.room_id)
            .where(
                room_memberships.c.membership == "join",
                room_memberships.c.user_id.endswith(suffix, autoescape=True),
            )
            .distinct()
            .subquery()
        )
        newest = sa.func.max(events.c.stream_ordering)
        room = events.c.room_id
        query = (
            sa.select(room, newest.label("stream_ordering"))
            .where(room.in_(sa.select(shared.c.room_id)))
            .group_by(room)
            .order_by(room.desc() if backwards else room.asc())
            .offset(offset)
            .limit(limit)
        )
        count = sa.select(sa.func.count()).select_from(shared)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
            total = int((await conn.execute(count)).scalar_one())
        return [DestinationRoom(r.room_id, int(r.stream_ordering)) for r in rows], total

    async def reset_backoff(self, destination: str) -> bool:
        """End the destination's back-off: tried again at once. False if it is unknown."""
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(federation_destinations)
                .where(_fd.destination == destination)
                .values(retry_interval_ms=0, retry_at_ts=0)
            )
        return bool(result.rowcount)
