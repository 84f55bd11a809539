"""Account data, to-device messages, presence, typing and receipts."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# --- account data, to-device messages -----------------------------------------------------

account_data = sa.Table(
    "account_data",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, primary_key=True),  # "" for global account data
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("content", sa.JSON, nullable=False),
    sa.Column("stream_position", BigInt, nullable=False),  # Stream.ACCOUNT_DATA
    sa.Index(None, "user_id", "stream_position"),
)

room_tags = sa.Table(
    "room_tags",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("tag", sa.Text, primary_key=True),
    # NULL once the tag is deleted: the row stays with the deletion's position, so that an
    # incremental sync sees the room's tags changed and sends its new (smaller) m.tag.
    sa.Column("content", sa.JSON, nullable=True),
    sa.Column("stream_position", BigInt, nullable=False),  # Stream.ACCOUNT_DATA
    sa.Index(None, "user_id", "stream_position"),
)

device_inbox = sa.Table(
    "device_inbox",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("stream_position", BigInt, primary_key=True),  # Stream.TO_DEVICE
    sa.Column("sender", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("content", sa.JSON, nullable=False),
    # The to-device position of the first sync response that carried the message; a sync
    # from a token at or past it acknowledges the message, which is then deleted.
    sa.Column("delivered_at", BigInt, nullable=True),
)

to_device_txns = sa.Table(
    "to_device_txns",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("txn_id", sa.Text, primary_key=True),
    sa.Column("created_ts", BigInt, nullable=False),
)

# --- presence, typing, receipts (issue 3) ---------------------------------------------------

presence = sa.Table(
    "presence",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),  # online, unavailable, offline
    sa.Column("status_msg", sa.Text, nullable=True),
    sa.Column("last_active_ts", BigInt, nullable=False),
    # When a sync (or WebSocket) of the user was last seen open; refreshed while one is, so the
    # sweeper on any worker can tell that nobody is connected any more.
    sa.Column("last_sync_ts", BigInt, nullable=False),
    sa.Column("currently_active", sa.Boolean, nullable=False),
    sa.Column("stream_position", BigInt, nullable=False, index=True),
)

typing_notifications = sa.Table(
    "typing_notifications",
    metadata,
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("expires_ts", BigInt, nullable=False, index=True),
)

# The typing position of each room's last change: a user who stops typing leaves no row behind,
# so the room remembers that its list changed.
typing_rooms = sa.Table(
    "typing_rooms",
    metadata,
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("stream_position", BigInt, nullable=False, index=True),
)

receipts = sa.Table(
    "receipts",
    metadata,
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("receipt_type", sa.Text, primary_key=True),  # m.read, m.read.private
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("thread_id", sa.Text, primary_key=True),  # "" for an unthreaded receipt
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("event_stream_ordering", BigInt, nullable=False),
    sa.Column("ts", BigInt, nullable=False),
    sa.Column("stream_position", BigInt, nullable=False),
    sa.Index(None, "room_id", "stream_position"),
    # Whose receipts moved after a position, in all rooms: a woken sync keeps its unread
    # counts unless its user's read marks moved (homeserver/push/unread.py).
    sa.Index(None, "stream_position"),
)
