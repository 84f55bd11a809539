"""Simplified sliding sync (MSC4186): a user's room list with bump stamps, and the positions
of each connection (what it was sent), kept across restarts and shared by workers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.schema import events, room_memberships, sliding_sync_positions

# MSC4186 "bump_stamp": the event types that move a room up the list (those Synapse uses by
# default: what a user sees as activity, never a state change such as a profile update).
BUMP_EVENT_TYPES = (
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
)


@dataclass(frozen=True, slots=True)
class RoomListEntry:
    """One of the user's memberships, with the room's latest bumping event up to a position."""

    room_id: str
    membership: str
    event_id: str
    sender: str
    stream_ordering: int
    forgotten: bool
    bump_stamp: int | None


@dataclass(frozen=True, slots=True)
class Hero:
    user_id: str
    displayname: str | None
    avatar_url: str | None


@dataclass(frozen=True, slots=True)
class StoredPosition:
    user_id: str
    device_id: str
    conn_id: str
    state: str
    created_ts: int


_m = room_memberships
_e = events.alias("bump")
_p = sliding_sync_positions
# The room's newest bumping event at or below ``upto``: a backward walk of the room's
# (room_id, stream_ordering) index that stops at the first such event.
_BUMP = (
    sa.select(_e.c.stream_ordering)
    .where(
        _e.c.room_id == _m.c.room_id,
        _e.c.type.in_(BUMP_EVENT_TYPES),
        _e.c.stream_ordering <= sa.bindparam("upto"),
    )
    .order_by(_e.c.stream_ordering.desc())
    .limit(1)
    .scalar_subquery()
)
_ROOM_LIST = prepared(
    sa.select(
        _m.c.room_id,
        _m.c.membership,
        _m.c.event_id,
        _m.c.sender,
        _m.c.stream_ordering,
        _m.c.forgotten,
        _BUMP.label("bump_stamp"),
    ).where(_m.c.user_id == sa.bindparam("user_id"))
)
_BUMP_STAMPS = prepared(
    sa.select(_m.c.room_id, _BUMP.label("bump_stamp")).where(
        _m.c.user_id == sa.bindparam("user_id"),
        _m.c.room_id.in_(sa.bindparam("room_ids", expanding=True)),
    )
)
_HEROES = prepared(
    sa.select(_m.c.user_id, _m.c.displayname, _m.c.avatar_url)
    .where(
        _m.c.room_id == sa.bindparam("room_id"),
        _m.c.membership.in_(["join", "invite"]),
        _m.c.user_id != sa.bindparam("exclude"),
    )
    .order_by(_m.c.stream_ordering)
    .limit(sa.bindparam("limit"))
)
_GET_POSITION = prepared(
    sa.select(_p.c.user_id, _p.c.device_id, _p.c.conn_id, _p.c.state, _p.c.created_ts).where(
        _p.c.id == sa.bindparam("id")
    )
)


def _same_connection(
    user_id: str, device_id: str, conn_id: str
) -> tuple[sa.ColumnElement[bool], ...]:
    return (_p.c.user_id == user_id, _p.c.device_id == device_id, _p.c.conn_id == conn_id)


class SlidingSyncStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_room_list(self, user_id: str, upto: int) -> list[RoomListEntry]:
        """Every membership of the user (forgotten ones too), each with its room's bump stamp
        at the committed events position ``upto``."""
        async with self._db.read() as conn:
            rows = (await conn.execute(_ROOM_LIST, {"user_id": user_id, "upto": upto})).all()
        return [
            RoomListEntry(
                r.room_id,
                r.membership,
                r.event_id,
                r.sender,
                int(r.stream_ordering),
                bool(r.forgotten),
                int(r.bump_stamp) if r.bump_stamp is not None else None,
            )
            for r in rows
        ]

    async def get_bump_stamps(
        self, user_id: str, room_ids: Sequence[str], upto: int
    ) -> dict[str, int | None]:
        """The bump stamps of some of the user's rooms at ``upto`` (as ``get_room_list``)."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    _BUMP_STAMPS, {"user_id": user_id, "room_ids": list(room_ids), "upto": upto}
                )
            ).all()
        return {r.room_id: int(r.bump_stamp) if r.bump_stamp is not None else None for r in rows}

    async def get_heroes(self, room_id: str, exclude: str, limit: int) -> list[Hero]:
        """Joined or invited members other than ``exclude``, the earliest first."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    _HEROES, {"room_id": room_id, "exclude": exclude, "limit": limit}
                )
            ).all()
        return [Hero(r.user_id, r.displayname, r.avatar_url) for r in rows]

    async def get_position(self, position: int) -> StoredPosition | None:
        async with self._db.read() as conn:
            r = (await conn.execute(_GET_POSITION, {"id": position})).first()
        if r is None:
            return None
        return StoredPosition(r.user_id, r.device_id, r.conn_id, r.state, int(r.created_ts))

    async def add_position(
        self,
        user_id: str,
        device_id: str,
        conn_id: str,
        position: int,
        state: str,
        now_ms: int,
        *,
        used: int | None,
        max_connections: int,
    ) -> None:
        """Store a new position of the connection.

        ``used``: the position the request came from: the client holds it, so the older ones
        are dropped (it may still retry ``used`` itself). None: the connection starts over,
        dropping all of its positions, and the device keeps its ``max_connections`` most
        recently used connections.
        """
        same = _same_connection(user_id, device_id, conn_id)
        async with self._db.write() as conn:
            if used is None:
                await conn.execute(sa.delete(_p).where(*same))
            else:
                await conn.execute(sa.delete(_p).where(*same, _p.c.id < used))
            await conn.execute(
                sa.insert(_p).values(
                    id=position,
                    user_id=user_id,
                    device_id=device_id,
                    conn_id=conn_id,
                    state=state,
                    created_ts=now_ms,
                )
            )
            if used is None:
                await self._drop_oldest_connections(conn, user_id, device_id, max_connections)

    async def _drop_oldest_connections(
        self, conn: Connection, user_id: str, device_id: str, keep: int
    ) -> None:
        newest = sa.func.max(_p.c.created_ts)
        rows = (
            await conn.execute(
                sa.select(_p.c.conn_id, newest.label("used"))
                .where(_p.c.user_id == user_id, _p.c.device_id == device_id)
                .group_by(_p.c.conn_id)
                .order_by(newest.desc(), _p.c.conn_id)
                .offset(keep)
            )
        ).all()
        stale = [r.conn_id for r in rows]
        if stale:
            await conn.execute(
                sa.delete(_p).where(
                    _p.c.user_id == user_id, _p.c.device_id == device_id, _p.c.conn_id.in_(stale)
                )
            )

    async def delete_connections(self, user_id: str, device_ids: list[str]) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(_p).where(_p.c.user_id == user_id, _p.c.device_id.in_(device_ids))
            )

    async def expire(self, before_ts: int) -> int:
        """Drop the positions stored before ``before_ts``; returns how many."""
        async with self._db.write() as conn:
            result = await conn.execute(sa.delete(_p).where(_p.c.created_ts < before_ts))
        return int(result.rowcount or 0)
