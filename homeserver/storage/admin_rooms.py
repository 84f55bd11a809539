"""What the admin API reads and does on rooms: counts for the room list, room deletion
tasks, and the purge that takes a room out of every table (issue 22)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

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


@dataclass(frozen=True, slots=True)
class RoomListQuery:
    offset: int
    limit: int
    order_by: str  # a key of ROOM_STATE_ORDERS, or a column of the room's counts
    descending: bool
    search_term: str | None = None  # in the name, the alias' localpart, or the room ID
    public_rooms: bool | None = None
    empty_rooms: bool | None = None


# Orderings by a string field of a state event's content: (event type, field).
ROOM_STATE_ORDERS = {
    "name": ("m.room.name", "name"),
    "canonical_alias": ("m.room.canonical_alias", "alias"),
    "encryption": ("m.room.encryption", "algorithm"),
    "join_rules": ("m.room.join_rules", "join_rule"),
    "guest_access": ("m.room.guest_access", "guest_access"),
    "history_visibility": ("m.room.history_visibility", "history_visibility"),
}


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _counts(r: Any) -> RoomCounts:
    return RoomCounts(
        r.room_id,
        r.room_version,
        r.creator,
        bool(r.is_public),
        int(r.joined or 0),
        int(r.local_joined or 0),
        int(r.n or 0),
    )


def _task(r: Any) -> DeleteTask:
    return DeleteTask(r.delete_id, r.room_id, r.status, r.error, r.result, int(r.created_ts))


class AdminRoomStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _counts_query(self, server_name: str) -> tuple[sa.Select[Any], Any, Any]:
        """Every room with its joined members, local ones, and state events; the two
        subqueries (``joined``, ``state``) for ordering and filtering on them."""
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
        query = sa.select(
            rooms.c.room_id,
            rooms.c.room_version,
            rooms.c.creator,
            rooms.c.is_public,
            joined.c.joined,
            joined.c.local_joined,
            state.c.n,
        ).select_from(
            rooms.outerjoin(joined, joined.c.room_id == rooms.c.room_id).outerjoin(
                state, state.c.room_id == rooms.c.room_id
            )
        )
        return query, joined, state

    async def room_counts(self, server_name: str, room_id: str | None = None) -> list[RoomCounts]:
        """Every room (or one) with its joined members, local ones, and state events."""
        query, _, _ = self._counts_query(server_name)
        query = query.order_by(rooms.c.room_id)
        if room_id is not None:
            query = query.where(rooms.c.room_id == room_id)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_counts(r) for r in rows]

    async def list_rooms(
        self, server_name: str, query: RoomListQuery
    ) -> tuple[list[RoomCounts], int]:
        """A page of the admin room list, filtered and ordered in SQL (ties by room ID, so
        that pages do not overlap), and the number of rooms the filters let through."""
        select, joined, state = self._counts_query(server_name)
        where: list[sa.ColumnElement[bool]] = []
        if query.search_term is not None:
            pattern = "%" + _like_escape(query.search_term.lower()) + "%"
            alias = self._state_text("m.room.canonical_alias", "alias")
            where.append(
                sa.or_(
                    sa.func.lower(self._state_text("m.room.name", "name")).like(
                        pattern, escape="\\"
                    ),
                    sa.func.lower(self._alias_localpart(alias)).like(pattern, escape="\\"),
                    rooms.c.room_id.contains(query.search_term, autoescape=True),
                )
            )
        if query.public_rooms is not None:
            where.append(rooms.c.is_public.is_(query.public_rooms))
        if query.empty_rooms is not None:
            empty = sa.func.coalesce(joined.c.joined, 0) == 0
            where.append(empty if query.empty_rooms else sa.not_(empty))
        select = select.where(*where)
        key = self._order_key(query.order_by, joined, state)
        ordered = key.desc().nulls_first() if query.descending else key.asc().nulls_last()
        page = select.order_by(ordered, rooms.c.room_id).offset(query.offset).limit(query.limit)
        count = sa.select(sa.func.count()).select_from(select.subquery())
        async with self._db.read() as conn:
            rows = (await conn.execute(page)).all()
            total = int((await conn.execute(count)).scalar_one())
        return [_counts(r) for r in rows], total

    def _order_key(self, order_by: str, joined: Any, state: Any) -> sa.ColumnElement[Any]:
        if order_by in ROOM_STATE_ORDERS:
            return self._collated(self._state_text(*ROOM_STATE_ORDERS[order_by]))
        if order_by == "joined_members":
            return sa.func.coalesce(joined.c.joined, 0)
        if order_by == "joined_local_members":
            return sa.func.coalesce(joined.c.local_joined, 0)
        if order_by == "state_events":
            return sa.func.coalesce(state.c.n, 0)
        if order_by == "version":
            return self._collated(rooms.c.room_version)
        if order_by == "creator":
            return self._collated(rooms.c.creator)
        if order_by == "public":
            return rooms.c.is_public
        if order_by == "federatable":
            # m.federate in the create event's content: only false turns federation off.
            return sa.not_(
                sa.func.coalesce(self._state_json("m.room.create", "m.federate", "false"), False)
            )
        raise ValueError(order_by)

    def _collated(self, expr: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """Ordered by code point on both databases (SQLite's default; PostgreSQL's "C")."""
        return expr if self._db.is_sqlite else sa.collate(expr, "C")

    def _content_of(self, event_type: str) -> sa.ScalarSelect[Any]:
        """The JSON of the room's current state event of this type (empty state key)."""
        return (
            sa.select(events.c.json)
            .select_from(current_state.join(events, events.c.event_id == current_state.c.event_id))
            .where(
                current_state.c.room_id == rooms.c.room_id,
                current_state.c.type == event_type,
                current_state.c.state_key == "",
            )
            .scalar_subquery()
        )

    def _state_text(self, event_type: str, key: str) -> sa.ColumnElement[Any]:
        """``content[key]`` of the state event, when it is a string (else NULL)."""
        raw = self._content_of(event_type)
        if self._db.is_sqlite:
            path = f'$.content."{key}"'
            return sa.case(
                (sa.func.json_type(raw, path) == "text", sa.func.json_extract(raw, path)),
                else_=sa.null(),
            )
        content = sa.cast(raw, JSONB)
        return sa.case(
            (
                sa.func.jsonb_typeof(sa.func.jsonb_extract_path(content, "content", key))
                == "string",
                sa.func.jsonb_extract_path_text(content, "content", key),
            ),
            else_=sa.null(),
        )

    def _state_json(self, event_type: str, key: str, json_literal: str) -> sa.ColumnElement[bool]:
        """Whether ``content[key]`` of the state event is this JSON literal (true, false,
        null); NULL without the event."""
        raw = self._content_of(event_type)
        if self._db.is_sqlite:
            return sa.func.json_type(raw, f'$.content."{key}"') == json_literal
        value = sa.func.jsonb_extract_path(sa.cast(raw, JSONB), "content", key)
        return value == sa.cast(sa.literal(json_literal), JSONB)

    def _alias_localpart(self, alias: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """``#local:server`` -> ``local``."""
        rest = sa.func.substr(alias, 2)
        if self._db.is_sqlite:
            colon = sa.func.instr(rest, ":")
            return sa.case((colon > 0, sa.func.substr(rest, 1, colon - 1)), else_=rest)
        return sa.func.split_part(rest, ":", 1)

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
