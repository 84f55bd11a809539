"""Relations between events."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# --- relations (issue 3) ---------------------------------------------------------------------

# One row per event whose content has a well-formed `m.relates_to` with a `rel_type` (a reply's
# `m.in_reply_to` is not one). Redacting the child deletes its row: the relation is broken.
event_relations = sa.Table(
    "event_relations",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),  # the child
    sa.Column("relates_to_id", sa.Text, nullable=False),  # the parent
    sa.Column("rel_type", sa.Text, nullable=False),
    sa.Column("room_id", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),  # the child's event type
    sa.Column("sender", sa.Text, nullable=False),
    sa.Column("aggregation_key", sa.Text, nullable=True),  # m.annotation: the reaction key
    sa.Column("origin_server_ts", BigInt, nullable=False),  # m.replace: the latest edit wins
    sa.Column("stream_ordering", BigInt, nullable=False),
    sa.Index(None, "relates_to_id", "rel_type", "stream_ordering"),
    # The thread list of a room, by latest activity.
    sa.Index(None, "room_id", "rel_type", "stream_ordering"),
)


# --- thread subscriptions (MSC4306, issue 20) --------------------------------------------------

# A user's latest subscription setting for one thread; `stream_id` is the position on the
# thread_subscriptions stream of its latest change (what sliding sync's extension reads).
thread_subscriptions = sa.Table(
    "thread_subscriptions",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("thread_root_id", sa.Text, primary_key=True),
    sa.Column("subscribed", sa.Boolean, nullable=False),
    sa.Column("automatic", sa.Boolean, nullable=False),
    sa.Column("stream_id", BigInt, nullable=False),
    # Unsubscribed: the events stream position at that moment. An automatic subscription
    # caused by an event at or before it conflicts with the unsubscription.
    sa.Column("unsubscribed_at", BigInt, nullable=True),
    sa.Index(None, "user_id", "stream_id"),
)
