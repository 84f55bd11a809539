"""What the admin API reads and does on rooms: counts for the room list, room deletion
tasks, and the purge that takes a room out of every table (issue 22)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.storage.database import Connection, Database
from homeserver.storage.schema import (
    BACKFILL_BASE,
    current_state,
    events,
    metadata,
    room_delete_tasks,
    room_memberships,
    rooms,
    state_groups,
    user_redactions,
)

# Tables that keep a purged room's ID on purpose: the deletion's own status, the block that
# keeps the room from coming back, and the purge's note to the other workers' caches (the
# cache invalidation stream, pruned after an hour).
KEPT_AFTER_PURGE = frozenset({"room_delete_tasks", "blocked_rooms", "cache_invalidations"})
# Columns that hold a room ID, an event ID or a state group, by name, in any table: the purge
# reads them from the schema, so that a table added later is purged too.
ROOM_COLUMNS = frozenset({"room_id"})
# A push rule of kind "room" is named by the room's ID.
ROOM_NAMED_COLUMNS = frozenset({"rule_id"})
EVENT_COLUMNS = frozenset(
    {"event_id", "auth_id", "prev_event_id", "relates_to_id", "redacted_by", "latest_event_id"}
)
STATE_GROUP_COLUMNS = frozenset({"state_group", "prev_group", "current_state_group"})
_CHUNK = 500  # IDs per IN list


@dataclass(frozen=True, slots=True)
class RoomCounts:
    room_id: str
    room_version: str
    creator: str
    is_public: bool
    joined_members: int
    joined_local_members: int
    state_events: int


@dataclass(frozen=True, slots=True)
class DeleteTask:
    delete_id: str
    room_id: str
    status: str
    error: str | None
    result: dict[str, Any] | None
    created_ts: int


def _task(r: Any) -> DeleteTask:
    return DeleteTask(r.delete_id, r.room_id, r.status, r.error, r.result, int(r.created_ts))


class AdminRoomStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def room_counts(self, server_name: str, room_id: str | None = None) -> list[RoomCounts]:
        """Every room (or one) with its joined members, local ones, and state events."""
        m = room_memberships.c
        local = m.user_id.like(f"%:{server_name}")
        joined = (
            sa.select(
                m.room_id,
                sa.func.count().label("joined"),
                sa.func.sum(sa.case((local, 1), else_=0)).label("local_joined"),
            )
            .where(m.membership == "join")
            .group_by(m.room_id)
            .subquery("joined")
        )
        state = (
            sa.select(current_state.c.room_id, sa.func.count().label("n"))
            .group_by(current_state.c.room_id)
            .subquery("state")
        )
        query = (
            sa.select(
                rooms.c.room_id,
                rooms.c.room_version,
                rooms.c.creator,
                rooms.c.is_public,
                joined.c.joined,
                joined.c.local_joined,
                state.c.n,
            )
            .select_from(
                rooms.outerjoin(joined, joined.c.room_id == rooms.c.room_id).outerjoin(
                    state, state.c.room_id == rooms.c.room_id
                )
            )
            .order_by(rooms.c.room_id)
        )
        if room_id is not None:
            query = query.where(rooms.c.room_id == room_id)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            RoomCounts(
                r.room_id,
                r.room_version,
                r.creator,
                bool(r.is_public),
                int(r.joined or 0),
                int(r.local_joined or 0),
                int(r.n or 0),
            )
            for r in rows
        ]

    # --- deletion tasks ----------------------------------------------------------------------

    async def add_delete_task(self, delete_id: str, room_id: str, now_ms: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.insert(room_delete_tasks).values(
                    delete_id=delete_id,
                    room_id=room_id,
                    status="shutting_down",
                    error=None,
                    result=None,
                    created_ts=now_ms,
                )
            )

    async def update_delete_task(
        self,
        delete_id: str,
        status: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": status, "error": error}
        if result is not None:
            values["result"] = result
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(room_delete_tasks)
                .where(room_delete_tasks.c.delete_id == delete_id)
                .values(**values)
            )

    async def get_delete_task(self, delete_id: str) -> DeleteTask | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(room_delete_tasks).where(room_delete_tasks.c.delete_id == delete_id)
                )
            ).first()
        return None if r is None else _task(r)

    async def get_delete_tasks(self, room_id: str) -> list[DeleteTask]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(room_delete_tasks)
                    .where(room_delete_tasks.c.room_id == room_id)
                    .order_by(room_delete_tasks.c.created_ts, room_delete_tasks.c.delete_id)
                )
            ).all()
        return [_task(r) for r in rows]

    # --- redacting a user's events ----------------------------------------------------------

    async def user_events(
        self,
        user_id: str,
        room_ids: Sequence[str],
        limit_per_room: int,
        after_ts: int | None,
        before_ts: int | None,
    ) -> list[tuple[str, str]]:
        """(room ID, event ID) of the user's events not yet redacted, newest first in each
        room: what a redaction can take (no state, no redactions)."""
        e = events.c
        found: list[tuple[str, str]] = []
        async with self._db.read() as conn:
            for room_id in room_ids:
                query = sa.select(e.event_id).where(
                    e.sender == user_id,
                    e.room_id == room_id,
                    e.state_key.is_(None),
                    e.type != "m.room.redaction",
                    e.redacted_by.is_(None),
                    # Served events only (not outliers or rejected): on the events stream,
                    # or backfilled below it.
                    sa.or_(e.stream_ordering > 0, e.stream_ordering <= BACKFILL_BASE),
                )
                if after_ts is not None:
                    query = query.where(e.origin_server_ts >= after_ts)
                if before_ts is not None:
                    query = query.where(e.origin_server_ts <= before_ts)
                rows = (
                    await conn.execute(
                        # Newest first in the room's order: backfilled positions count
                        # down in the order they were fetched.
                        query.order_by(e.depth.desc(), e.stream_ordering.desc()).limit(
                            limit_per_room
                        )
                    )
                ).all()
                found.extend((room_id, r.event_id) for r in rows)
        return found

    async def user_room_ids(self, user_id: str) -> list[str]:
        """Every room the user has a membership in, of any kind."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(room_memberships.c.room_id)
                    .where(room_memberships.c.user_id == user_id)
                    .order_by(room_memberships.c.room_id)
                )
            ).all()
        return [r.room_id for r in rows]

    async def add_redaction_task(self, redact_id: str, user_id: str, now_ms: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.insert(user_redactions).values(
                    redact_id=redact_id,
                    user_id=user_id,
                    status="scheduled",
                    failed={},
                    created_ts=now_ms,
                )
            )

    async def update_redaction_task(
        self, redact_id: str, status: str, failed: dict[str, str]
    ) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(user_redactions)
                .where(user_redactions.c.redact_id == redact_id)
                .values(status=status, failed=failed)
            )

    async def get_redaction_task(self, redact_id: str) -> tuple[str, dict[str, str]] | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(user_redactions.c.status, user_redactions.c.failed).where(
                        user_redactions.c.redact_id == redact_id
                    )
                )
            ).first()
        return None if r is None else (r.status, dict(r.failed))

    # --- purge -------------------------------------------------------------------------------

    async def purge_room(self, room_id: str) -> list[int]:
        """Delete every row of every table that names the room, one of its events or one of
        its state groups (but ``KEPT_AFTER_PURGE``), in one transaction. Returns the state
        groups deleted (caches must forget them: their IDs may be given again)."""
        async with self._db.write() as conn:
            event_ids = [
                r[0]
                for r in (
                    await conn.execute(
                        sa.select(events.c.event_id).where(events.c.room_id == room_id)
                    )
                ).all()
            ]
            groups = [
                r[0]
                for r in (
                    await conn.execute(
                        sa.select(state_groups.c.id).where(state_groups.c.room_id == room_id)
                    )
                ).all()
            ]
            for table in reversed(metadata.sorted_tables):
                if table.name in KEPT_AFTER_PURGE:
                    continue
                for column in table.columns:
                    if column.name in ROOM_COLUMNS or column.name in ROOM_NAMED_COLUMNS:
                        await conn.execute(sa.delete(table).where(column == room_id))
                    elif column.name in EVENT_COLUMNS:
                        await _delete_in(conn, table, column, event_ids)
                    elif column.name in STATE_GROUP_COLUMNS or (
                        table is state_groups and column.name == "id"
                    ):
                        await _delete_in(conn, table, column, groups)
        return groups


async def _delete_in(
    conn: Connection, table: sa.Table, column: sa.Column[Any], values: Sequence[object]
) -> None:
    for start in range(0, len(values), _CHUNK):
        chunk = list(values[start : start + _CHUNK])
        await conn.execute(sa.delete(table).where(column.in_(chunk)))
