"""Presence: each user's state and the times it is derived from, one row per user."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.schema import presence, room_memberships

OFFLINE = "offline"
ONLINE = "online"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class PresenceState:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int
    last_sync_ts: int
    currently_active: bool
    stream_position: int


@dataclass(frozen=True, slots=True)
class SweepResult:
    """Who the sweep changed, at which presence position (0 and empty when nobody)."""

    position: int
    user_ids: tuple[str, ...]


def _state(r: sa.Row[tuple[object, ...]]) -> PresenceState:
    return PresenceState(
        r.user_id,
        r.state,
        r.status_msg,
        int(r.last_active_ts),
        int(r.last_sync_ts),
        bool(r.currently_active),
        int(r.stream_position),
    )


def _sharing_users(user_id: str | sa.BindParameter[str]) -> sa.Select[tuple[str]]:
    """Users joined to a room that ``user_id`` is joined to (themselves included)."""
    mine = room_memberships.alias("mine")
    theirs = room_memberships.alias("theirs")
    return (
        sa.select(theirs.c.user_id)
        .distinct()
        .join(mine, mine.c.room_id == theirs.c.room_id)
        .where(
            mine.c.user_id == user_id, mine.c.membership == "join", theirs.c.membership == "join"
        )
    )


def _newly_shared_query(exclude_offline: bool) -> sa.Select[Any]:
    """Presence of users who began to share a room with :user_id in (:after, :upto]."""
    mine = room_memberships.alias("mine")
    theirs = room_memberships.alias("theirs")
    after: sa.BindParameter[int] = sa.bindparam("after")
    upto: sa.BindParameter[int] = sa.bindparam("upto")
    joined = sa.or_(
        sa.and_(mine.c.stream_ordering > after, mine.c.stream_ordering <= upto),
        sa.and_(theirs.c.stream_ordering > after, theirs.c.stream_ordering <= upto),
    )
    user_id: sa.BindParameter[str] = sa.bindparam("user_id")
    newcomers = (
        sa.select(theirs.c.user_id)
        .join(mine, mine.c.room_id == theirs.c.room_id)
        .where(
            mine.c.user_id == user_id,
            mine.c.membership == "join",
            theirs.c.membership == "join",
            theirs.c.user_id != user_id,
            joined,
        )
    )
    query = sa.select(presence).where(presence.c.user_id.in_(newcomers))
    if exclude_offline:
        query = query.where(presence.c.state != OFFLINE)
    return query.order_by(presence.c.user_id)


def _changed_query() -> sa.Select[Any]:
    user_id: sa.BindParameter[str] = sa.bindparam("user_id")
    return (
        sa.select(presence)
        .where(
            presence.c.stream_position > sa.bindparam("after"),
            presence.c.stream_position <= sa.bindparam("upto"),
            sa.or_(presence.c.user_id == user_id, presence.c.user_id.in_(_sharing_users(user_id))),
        )
        .order_by(presence.c.user_id)
    )


# Every incremental sync runs these: built once.
_NEWLY_SHARED = {exclude: prepared(_newly_shared_query(exclude)) for exclude in (False, True)}
_CHANGED = prepared(_changed_query())
_GET = prepared(sa.select(presence).where(presence.c.user_id == sa.bindparam("user_id")))


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, user_id: str) -> PresenceState | None:
        async with self._db.read() as conn:
            r = (await conn.execute(_GET, {"user_id": user_id})).first()
        return _state(r) if r is not None else None

    async def put(
        self,
        user_id: str,
        *,
        state: str,
        status_msg: str | None,
        last_active_ts: int,
        last_sync_ts: int,
        currently_active: bool,
    ) -> int:
        """Store what others see of ``user_id``; returns its new presence position."""
        async with self._db.write() as conn:
            position = await self._db.next_position(conn, Stream.PRESENCE)
            await conn.execute(
                self._db.upsert(
                    presence,
                    {
                        "user_id": user_id,
                        "state": state,
                        "status_msg": status_msg,
                        "last_active_ts": last_active_ts,
                        "last_sync_ts": last_sync_ts,
                        "currently_active": currently_active,
                        "stream_position": position,
                    },
                    keys=("user_id",),
                )
            )
        return position

    async def touch(
        self, user_id: str, *, last_active_ts: int | None = None, last_sync_ts: int | None = None
    ) -> None:
        """Move timestamps that others are not told about (no new position)."""
        values: dict[str, int] = {}
        if last_active_ts is not None:
            values["last_active_ts"] = last_active_ts
        if last_sync_ts is not None:
            values["last_sync_ts"] = last_sync_ts
        if not values:
            return
        # One statement on its own: one round trip on PostgreSQL (no BEGIN and COMMIT), so a
        # crowd of long-polls ending together does not queue for the transaction pool.
        await self._db.write_alone(
            sa.update(presence).where(presence.c.user_id == user_id).values(**values)
        )

    async def keep_connected(self, user_ids: Sequence[str], now_ms: int) -> None:
        """Connections are open on this worker for these users: they are not gone."""
        if not user_ids:
            return
        await self._db.write_alone(
            sa.update(presence)
            .where(presence.c.user_id.in_(list(user_ids)), presence.c.last_sync_ts < now_ms)
            .values(last_sync_ts=now_ms)
        )

    async def sweep(
        self, *, offline_before: int, idle_before: int, inactive_before: int
    ) -> SweepResult:
        """Apply the timers: offline when no connection or activity since ``offline_before``,
        unavailable when online without activity since ``idle_before``, no longer
        ``currently_active`` without activity since ``inactive_before``.

        Any worker may run it: each change is a conditional UPDATE, so two sweepers never
        apply one twice, and it reads nothing but the database.
        """
        gone = sa.and_(
            presence.c.state != OFFLINE,
            presence.c.last_sync_ts < offline_before,
            presence.c.last_active_ts < offline_before,
        )
        idle = sa.and_(presence.c.state == ONLINE, presence.c.last_active_ts < idle_before)
        inactive = sa.and_(
            presence.c.state == ONLINE,
            presence.c.currently_active.is_(True),
            presence.c.last_active_ts < inactive_before,
        )
        async with self._db.read() as conn:
            due = (
                await conn.execute(
                    sa.select(presence.c.user_id).where(sa.or_(gone, idle, inactive)).limit(1)
                )
            ).first()
        if due is None:
            return SweepResult(0, ())
        changed: set[str] = set()
        async with self._db.write() as conn:
            position = await self._db.next_position(conn, Stream.PRESENCE)
            steps: list[tuple[sa.ColumnElement[bool], dict[str, object]]] = [
                (gone, {"state": OFFLINE, "currently_active": False}),
                (idle, {"state": UNAVAILABLE, "currently_active": False}),
                (inactive, {"currently_active": False}),
            ]
            for condition, values in steps:
                changed.update(await _update_returning(conn, condition, values, position))
        return SweepResult(position, tuple(sorted(changed)))

    async def get_changed(self, user_id: str, since: int, upto: int) -> list[PresenceState]:
        """States moved in (since, upto] of users who share a room with ``user_id``, and
        of ``user_id`` themselves."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(_CHANGED, {"user_id": user_id, "after": since, "upto": upto})
            ).all()
        return [_state(r) for r in rows]

    async def get_newly_shared(
        self, user_id: str, since_event: int, upto_event: int, exclude_offline: bool = True
    ) -> list[PresenceState]:
        """Current states of users who began to share a room with ``user_id`` (either joined)
        in (since_event, upto_event] of the events stream."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    _NEWLY_SHARED[exclude_offline],
                    {"user_id": user_id, "after": since_event, "upto": upto_event},
                )
            ).all()
        return [_state(r) for r in rows]

    async def get_all_shared(self, user_id: str, upto: int) -> list[PresenceState]:
        """An initial sync: everyone sharing a room who is not offline, and oneself."""
        query = (
            sa.select(presence)
            .where(
                presence.c.stream_position <= upto,
                sa.or_(
                    presence.c.user_id == user_id,
                    sa.and_(
                        presence.c.state != OFFLINE, presence.c.user_id.in_(_sharing_users(user_id))
                    ),
                ),
            )
            .order_by(presence.c.user_id)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_state(r) for r in rows]

    async def get_present(self, server_name: str) -> list[PresenceState]:
        """The users of ``server_name`` who are not offline (federation's periodic
        announcement of them to other servers)."""
        query = sa.select(presence).where(
            presence.c.state != OFFLINE,
            presence.c.user_id.endswith(f":{server_name}", autoescape=True),
        )
        async with self._db.read() as conn:
            return [_state(r) for r in (await conn.execute(query.order_by(presence.c.user_id)))]

    async def shares_a_room(self, user_id: str, other: str) -> bool:
        mine = room_memberships.alias("mine")
        theirs = room_memberships.alias("theirs")
        query = (
            sa.select(mine.c.room_id)
            .join(theirs, theirs.c.room_id == mine.c.room_id)
            .where(
                mine.c.user_id == user_id,
                mine.c.membership == "join",
                theirs.c.user_id == other,
                theirs.c.membership == "join",
            )
            .limit(1)
        )
        async with self._db.read() as conn:
            r = (await conn.execute(query)).first()
        return r is not None

    async def get_sharing_users(self, user_ids: Iterable[str]) -> set[str]:
        """Everyone who shares a room with any of ``user_ids``, and those users themselves."""
        subjects = list(user_ids)
        if not subjects:
            return set()
        mine = room_memberships.alias("mine")
        theirs = room_memberships.alias("theirs")
        query = (
            sa.select(theirs.c.user_id)
            .distinct()
            .join(mine, mine.c.room_id == theirs.c.room_id)
            .where(
                mine.c.user_id.in_(subjects),
                mine.c.membership == "join",
                theirs.c.membership == "join",
            )
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {r.user_id for r in rows} | set(subjects)


async def _update_returning(
    conn: Connection, condition: sa.ColumnElement[bool], values: dict[str, object], position: int
) -> list[str]:
    result = await conn.execute(
        sa.update(presence)
        .where(condition)
        .values(**values, stream_position=position)
        .returning(presence.c.user_id)
    )
    return [r.user_id for r in result.all()]
