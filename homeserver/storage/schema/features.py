"""Sliding sync connections, content reports, delayed events."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# --- simplified sliding sync (MSC4186, issue 20) ------------------------------------------------

# One row per response position of a sliding sync connection (user, device, conn_id): what the
# client was sent (rooms, their status and position), so that the next request from that
# position sends only what changed. A client may retry a position until it uses a newer one,
# which drops the older rows; unused rows expire by ``created_ts``.
sliding_sync_positions = sa.Table(
    "sliding_sync_positions",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("conn_id", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),  # JSON (homeserver/sync/sliding/state.py)
    sa.Column("created_ts", BigInt, nullable=False, index=True),
    sa.Index(None, "user_id", "device_id", "conn_id"),
    # Never reuse an ID (SQLite would, after deleting the newest row): an old ``pos`` must
    # not name a newer position.
    sqlite_autoincrement=True,
)

# --- reports of rooms, events and users (spec: "Reporting content") ------------------------------

# What users report for the server's administrators to review (no admin API reads them yet).
content_reports = sa.Table(
    "content_reports",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("reporter", sa.Text, nullable=False),
    sa.Column("room_id", sa.Text, nullable=True),  # a room or an event report
    sa.Column("event_id", sa.Text, nullable=True),  # an event report
    sa.Column("user_id", sa.Text, nullable=True),  # a user report
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created_ts", BigInt, nullable=False, index=True),
)

# --- delayed events (MSC4140, issue 20) -----------------------------------------------------------

# Events a user asked to be sent later (Element Call: "leave the call if I vanish"). Sent by
# whichever worker finds them due, with the delay ID as the transaction ID, so a second
# worker sending the same one gets the same event; then the row goes.
delayed_events = sa.Table(
    "delayed_events",
    metadata,
    sa.Column("delay_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False, index=True),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("room_id", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("state_key", sa.Text, nullable=True),  # None: not a state event
    sa.Column("content", sa.JSON, nullable=False),
    sa.Column("delay", BigInt, nullable=False),  # ms, as asked (a restart waits it again)
    sa.Column("send_at", BigInt, nullable=False, index=True),
    # The events stream's position when it was scheduled: a state event of another user at
    # the same type and state key after it cancels it (MSC4140). NULL: never.
    sa.Column("after_position", BigInt, nullable=True),
)
