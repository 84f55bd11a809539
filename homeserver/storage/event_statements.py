"""The SQL the event store runs: prepared statements and the query shapes built once at import
(so that start-up compiles them: Database.prepare_statements). Only storage/events.py uses
them (their names stay private to that pair of modules)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from homeserver.core.streams import Stream
from homeserver.storage.database import prepared
from homeserver.storage.schema import (
    BigInt,
    event_push_actions,
    event_relations,
    event_txns,
    events,
    rooms,
    state_group_entries,
    state_groups,
    stream_positions,
)

_EVENT_COLUMNS = (
    events.c.stream_ordering,
    events.c.event_id,
    events.c.room_id,
    events.c.type,
    events.c.state_key,
    events.c.sender,
    events.c.origin_server_ts,
    events.c.depth,
    events.c.json,
    events.c.unsigned_json,
    events.c.state_group,
    events.c.redacted_by,
    events.c.device_id,
    events.c.txn_id,
)


# Hot statements, built once: building a statement costs more than running it on SQLite.
_e = events
_LOCK_ROOM = prepared(
    sa.select(rooms.c.latest_event_id, rooms.c.current_state_group)
    .where(rooms.c.room_id == sa.bindparam("room_id"))
    .with_for_update()
)
_MOVE_ROOM = prepared(
    sa.update(rooms)
    .where(rooms.c.room_id == sa.bindparam("id"))
    .values(
        latest_event_id=sa.bindparam("latest"),
        current_depth=sa.bindparam("depth"),
        current_state_group=sa.bindparam("group"),
    ),
    columns=("id", "latest", "depth", "group"),
)
# The columns persist_event gives every new event.
_INSERT_EVENT = prepared(
    sa.insert(events),
    columns=(
        "stream_ordering",
        "event_id",
        "room_id",
        "type",
        "state_key",
        "sender",
        "depth",
        "origin_server_ts",
        "json",
        "unsigned_json",
        "state_group",
        "device_id",
        "txn_id",
    ),
)
_EVENTS_BY_ID = prepared(
    sa.select(*_EVENT_COLUMNS).where(_e.c.event_id.in_(sa.bindparam("ids", expanding=True)))
)
_TXN = prepared(
    sa.select(event_txns.c.event_id).where(
        event_txns.c.user_id == sa.bindparam("user_id"),
        event_txns.c.device_id == sa.bindparam("device_id"),
        event_txns.c.scope == sa.bindparam("scope"),
        event_txns.c.txn_id == sa.bindparam("txn_id"),
    )
)
_WINDOW_FROM = _e.outerjoin(event_relations, event_relations.c.event_id == _e.c.event_id)
_IN_WINDOW = (
    _e.c.stream_ordering > sa.bindparam("after"),
    _e.c.stream_ordering <= sa.bindparam("upto"),
)
_WINDOW = prepared(
    sa.select(_e.c.room_id, _e.c.type, _e.c.state_key, _e.c.sender, event_relations.c.relates_to_id)
    .select_from(_WINDOW_FROM)
    .where(*_IN_WINDOW)
)
# A short window's: the events themselves too.
_WINDOW_EVENTS = prepared(
    sa.select(*_EVENT_COLUMNS, event_relations.c.relates_to_id)
    .select_from(_WINDOW_FROM)
    .where(*_IN_WINDOW)
    .order_by(_e.c.stream_ordering)
)
_ROOMS_CHANGED = prepared(
    sa.select(_e.c.room_id)
    .distinct()
    .where(
        _e.c.stream_ordering > sa.bindparam("after"),
        _e.c.stream_ordering <= sa.bindparam("upto"),
        _e.c.room_id.in_(sa.bindparam("rooms", expanding=True)),
    )
)
_PREV_GROUP = prepared(
    sa.select(state_groups.c.prev_group).where(state_groups.c.id == sa.bindparam("id"))
)


def _text(name: str) -> sa.BindParameter[str]:
    return sa.bindparam(name, type_=sa.Text)


def _message_statement(claim: bool, relation: bool) -> sa.Select[Any]:
    """PostgreSQL: everything a message (an event that is neither state nor a redaction)
    writes, in one statement, so in one round trip that is its own transaction.

    The room's row is compared-and-swapped (no row when its latest event is no longer
    :expected: nothing else is written and the position is NULL); then the events stream's
    position is taken, and the event, its push actions, its transaction ID (a taken one
    fails the whole statement on the primary key) and its relation are inserted at it. The
    room's row, then the position's, stay locked until the commit, in that order, as in
    ``persist_event``'s transaction.
    """
    moved = (
        sa.update(rooms)
        .where(
            rooms.c.room_id == sa.bindparam("room_id"),
            rooms.c.latest_event_id == sa.bindparam("expected"),
        )
        .values(latest_event_id=sa.bindparam("event_id"), current_depth=sa.bindparam("depth"))
        .returning(rooms.c.current_state_group)
        .cte("moved")
    )
    position = (
        sa.update(stream_positions)
        .where(stream_positions.c.stream == Stream.EVENTS.value, sa.select(moved).exists())
        .values(position=stream_positions.c.position + 1)
        .returning(stream_positions.c.position)
        .cte("position")
    )
    event = (
        sa.insert(events)
        .from_select(
            [
                "stream_ordering",
                "event_id",
                "room_id",
                "type",
                "sender",
                "depth",
                "origin_server_ts",
                "json",
                "unsigned_json",
                "state_group",
                "device_id",
                "txn_id",
            ],
            sa.select(
                position.c.position,
                _text("event_id"),
                _text("room_id"),
                _text("type"),
                _text("sender"),
                sa.bindparam("depth", type_=BigInt),
                sa.bindparam("ts", type_=BigInt),
                _text("json"),
                _text("unsigned_json"),
                moved.c.current_state_group,
                _text("device_id"),
                _text("txn_id"),
            ).select_from(position.join(moved, sa.true())),
        )
        .cte("event")
    )
    notified = (
        sa.func.unnest(
            sa.bindparam("users", type_=postgresql.ARRAY(sa.Text)),
            sa.bindparam("threads", type_=postgresql.ARRAY(sa.Text)),
            sa.bindparam("actions", type_=postgresql.ARRAY(sa.Text)),
            sa.bindparam("highlights", type_=postgresql.ARRAY(sa.Boolean)),
        )
        .table_valued("user_id", "thread_id", "actions", "highlight")
        .render_derived()
    )
    pushed = (
        sa.insert(event_push_actions)
        .from_select(
            [
                "stream_ordering",
                "user_id",
                "room_id",
                "event_id",
                "thread_id",
                "actions",
                "highlight",
                "ts",
            ],
            sa.select(
                position.c.position,
                notified.c.user_id,
                _text("room_id"),
                _text("event_id"),
                notified.c.thread_id,
                notified.c.actions,
                notified.c.highlight,
                sa.bindparam("ts", type_=BigInt),
            ).select_from(position.join(notified, sa.true())),
        )
        .cte("pushed")
    )
    statement = sa.select(position.c.position).add_cte(event, pushed)
    if claim:
        statement = statement.add_cte(
            sa.insert(event_txns)
            .from_select(
                ["user_id", "device_id", "scope", "txn_id", "event_id", "created_ts"],
                sa.select(
                    _text("sender"),
                    _text("device_id"),
                    _text("scope"),
                    _text("txn_id"),
                    _text("event_id"),
                    sa.bindparam("ts", type_=BigInt),
                ).select_from(position),
            )
            .cte("claimed")
        )
    if relation:
        statement = statement.add_cte(
            sa.insert(event_relations)
            .from_select(
                [
                    "event_id",
                    "relates_to_id",
                    "rel_type",
                    "room_id",
                    "type",
                    "sender",
                    "aggregation_key",
                    "origin_server_ts",
                    "stream_ordering",
                ],
                sa.select(
                    _text("event_id"),
                    _text("relates_to_id"),
                    _text("rel_type"),
                    _text("room_id"),
                    _text("type"),
                    _text("sender"),
                    _text("aggregation_key"),
                    sa.bindparam("ts", type_=BigInt),
                    position.c.position,
                ),
            )
            .cte("related")
        )
    return statement


_MESSAGE = {
    (c, r): prepared(_message_statement(c, r), dialect="postgresql")
    for c in (False, True)
    for r in (False, True)
}
# The constraint a taken transaction ID violates.
_TXN_KEY = str(event_txns.primary_key.name)


def _room_events_query(after: bool, upto: bool, descending: bool) -> sa.Select[Any]:
    query = sa.select(*_EVENT_COLUMNS).where(_e.c.room_id == sa.bindparam("room_id"))
    if after:
        query = query.where(_e.c.stream_ordering > sa.bindparam("after"))
    if upto:
        query = query.where(_e.c.stream_ordering <= sa.bindparam("upto"))
    order = _e.c.stream_ordering.desc() if descending else _e.c.stream_ordering.asc()
    return query.order_by(order).limit(sa.bindparam("limit"))


def _state_of_group_query() -> sa.Select[Any]:
    """The entries of :group and of its chain back to the nearest snapshot, oldest first
    (later ones override earlier ones)."""
    chain = (
        sa.select(
            state_groups.c.id,
            state_groups.c.prev_group,
            state_groups.c.is_snapshot,
            sa.literal(0).label("n"),
        )
        .where(state_groups.c.id == sa.bindparam("group"))
        .cte("chain", recursive=True)
    )
    parent = state_groups.alias("parent")
    chain = chain.union_all(
        sa.select(
            parent.c.id, parent.c.prev_group, parent.c.is_snapshot, (chain.c.n + 1).label("n")
        ).where(parent.c.id == chain.c.prev_group, chain.c.is_snapshot.is_(False))
    )
    return (
        sa.select(
            chain.c.n,
            state_group_entries.c.type,
            state_group_entries.c.state_key,
            state_group_entries.c.event_id,
        )
        .join(state_group_entries, state_group_entries.c.state_group == chain.c.id)
        .order_by(chain.c.n.desc())
    )


_STATE_OF_GROUP = prepared(_state_of_group_query())
_ROOM_EVENTS = {
    (a, u, d): prepared(_room_events_query(a, u, d))
    for a in (False, True)
    for u in (False, True)
    for d in (False, True)
}
