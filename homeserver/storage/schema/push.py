"""Push rules, push actions, pushers and their queue."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# --- push rules, push actions, pushers (issue 6) ---------------------------------------------

# A user's own push rules; within a kind, the higher priority is evaluated first.
push_rules = sa.Table(
    "push_rules",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),  # override, content, room, sender, underride
    sa.Column("rule_id", sa.Text, primary_key=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("conditions", sa.JSON, nullable=True),  # override and underride
    sa.Column("pattern", sa.Text, nullable=True),  # content
    sa.Column("actions", sa.JSON, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
)

# What a user changed in a server-default rule: NULL keeps the server's value.
push_rule_defaults = sa.Table(
    "push_rule_defaults",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("rule_id", sa.Text, primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=True),
    sa.Column("actions", sa.JSON, nullable=True),
)

# The notifying outcome of each event for each local member, written with the event (one row
# per member it notifies, none for the rest): unread counts, /notifications and pushers.
event_push_actions = sa.Table(
    "event_push_actions",
    metadata,
    # By position first: the pusher sender tails the table, and a large room's event writes
    # a thousand rows, so every index costs on the send path (one secondary index only).
    sa.Column("stream_ordering", BigInt, primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("thread_id", sa.Text, nullable=False),  # "main", or the thread root's event ID
    sa.Column("actions", sa.Text, nullable=False),  # JSON, as the matching rule has them
    sa.Column("highlight", sa.Boolean, nullable=False),
    sa.Column("ts", BigInt, nullable=False),
    sa.Index(None, "user_id", "room_id", "stream_ordering"),  # counts, /notifications
)

# Pushers; also the unit the sender claims: one worker at a time holds a pusher (until
# claimed_until) and sends its queue in order, backing off per pusher after a failure.
pushers = sa.Table(
    "pushers",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Text, nullable=False, index=True),
    sa.Column("kind", sa.Text, nullable=False),  # http, email
    sa.Column("app_id", sa.Text, nullable=False),
    sa.Column("pushkey", sa.Text, nullable=False),
    sa.Column("app_display_name", sa.Text, nullable=False),
    sa.Column("device_display_name", sa.Text, nullable=False),
    sa.Column("profile_tag", sa.Text, nullable=True),
    sa.Column("lang", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("pushkey_ts", BigInt, nullable=False),  # ms
    sa.Column("device_id", sa.Text, nullable=True),  # the device that set it
    # The events position when it was created: it is not pushed what came before.
    sa.Column("start_stream_ordering", BigInt, nullable=False, default=0),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),  # failures in a row
    sa.Column("next_attempt_ts", BigInt, nullable=False, default=0),
    sa.Column("claimed_by", sa.Text, nullable=True),
    sa.Column("claimed_until", BigInt, nullable=False, default=0),
    sa.UniqueConstraint("app_id", "pushkey", "user_id"),
)

# Notifications waiting for a pusher: one row per pusher and event, deleted once delivered.
push_queue = sa.Table(
    "push_queue",
    metadata,
    sa.Column("pusher_id", BigInt, primary_key=True),
    sa.Column("stream_ordering", BigInt, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("room_id", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("actions", sa.Text, nullable=False),
    sa.Column("event_ts", BigInt, nullable=False),
    sa.Column("due_ts", BigInt, nullable=False, index=True),  # e-mail waits for its delay
)

# How far the sender has turned push actions into queue rows (one row, "pusher").
push_cursors = sa.Table(
    "push_cursors",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("stream_ordering", BigInt, nullable=False),
)
