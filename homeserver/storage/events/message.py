"""PostgreSQL's one-statement persist of a message (writable CTEs)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from homeserver.core.streams import Stream
from homeserver.storage.database import prepared
from homeserver.storage.database.positions import sequence_name
from homeserver.storage.schema import (
    BigInt,
    event_auth,
    event_edges,
    event_forward_extremities,
    event_push_actions,
    event_relations,
    event_txns,
    events,
    rooms,
)


def _text(name: str) -> sa.BindParameter[str]:
    return sa.bindparam(name, type_=sa.Text)


def _message_statement(claim: bool, relation: bool) -> sa.Select[Any]:
    """PostgreSQL: everything a message (an event that is neither state nor a redaction)
    writes, in one statement, so in one round trip that is its own transaction.

    The room's row is compared-and-swapped (no row when its latest event is no longer
    :expected: nothing else is written and the position is NULL); then the events stream's
    position is taken from its sequence, and the event, its push actions, its transaction
    ID (a taken one fails the whole statement on the primary key) and its relation are
    inserted at it. The room's row stays locked until the commit, as in ``persist_event``'s
    transaction. The event's edges (``prevs``, ``auths``) are recorded and it replaces its
    prev_events among the room's forward extremities, as ``record_graph`` does there.
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
    # The events stream's sequence (storage/database/positions.py): no row lock.
    position = (
        sa.select(
            sa.func.nextval(sa.literal_column(f"'{sequence_name(Stream.EVENTS)}'")).label(
                "position"
            )
        )
        .where(sa.select(moved).exists())
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
    prevs = (
        sa.func.unnest(sa.bindparam("prevs", type_=postgresql.ARRAY(sa.Text)))
        .table_valued("prev_event_id")
        .render_derived()
    )
    auths = (
        sa.func.unnest(sa.bindparam("auths", type_=postgresql.ARRAY(sa.Text)))
        .table_valued("auth_id")
        .render_derived()
    )
    _f = event_forward_extremities
    # The graph: the event replaces its prev_events among the room's forward extremities
    # (other rows than the one inserted, so the two do not meet in one statement) and its
    # edges are recorded.
    unlinked = (
        sa.delete(_f)
        .where(
            _f.c.room_id == _text("room_id"),
            _f.c.event_id == sa.func.any(sa.bindparam("prevs", type_=postgresql.ARRAY(sa.Text))),
            sa.select(position).exists(),
        )
        .cte("unlinked")
    )
    linked = (
        sa.insert(_f)
        .from_select(
            ["room_id", "event_id"],
            sa.select(_text("room_id"), _text("event_id")).select_from(position),
        )
        .cte("linked")
    )
    edged = (
        sa.insert(event_edges)
        .from_select(
            ["event_id", "prev_event_id"],
            sa.select(_text("event_id"), prevs.c.prev_event_id).select_from(
                position.join(prevs, sa.true())
            ),
        )
        .cte("edged")
    )
    authed = (
        sa.insert(event_auth)
        .from_select(
            ["event_id", "auth_id"],
            sa.select(_text("event_id"), auths.c.auth_id).select_from(
                position.join(auths, sa.true())
            ),
        )
        .cte("authed")
    )
    statement = sa.select(position.c.position).add_cte(
        event, pushed, unlinked, linked, edged, authed
    )
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


MESSAGE = {
    (c, r): prepared(_message_statement(c, r), dialect="postgresql")
    for c in (False, True)
    for r in (False, True)
}
# The constraint a taken transaction ID violates.
