"""Federation: other servers' signing keys."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# --- federation -------------------------------------------------------------------------

# Other servers' signing keys, each with the key response that proved it (origin-signed,
# other signatures removed): the keyring verifies with verify_key, the notary endpoints
# serve key_json again under our own signature.
server_keys = sa.Table(
    "server_keys",
    metadata,
    sa.Column("server_name", sa.Text, primary_key=True),
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("verify_key", sa.Text, nullable=False),  # unpadded base64
    # For a current key, the response's valid_until_ts; for an old one, its expired_ts.
    sa.Column("valid_until_ts", BigInt, nullable=False),
    sa.Column("expired_ts", BigInt, nullable=True),  # set for keys in old_verify_keys
    sa.Column("fetched_ts", BigInt, nullable=False),
    sa.Column("from_server", sa.Text, nullable=False),  # the server itself or a notary
    sa.Column("key_json", sa.Text, nullable=False),
)

# --- transactions (issue 18) ------------------------------------------------------------

# Inbound transactions already processed, per origin: a retry is answered from here without
# processing it again (spec, PUT /send/{txnId}: transaction IDs are unique per origin).
federation_inbound_txns = sa.Table(
    "federation_inbound_txns",
    metadata,
    sa.Column("origin", sa.Text, primary_key=True),
    sa.Column("txn_id", sa.Text, primary_key=True),
    sa.Column("response_json", sa.Text, nullable=False),
    sa.Column("received_ts", BigInt, nullable=False, index=True),
)

# The outbound sender's cursors (the events stream position it has queued up to).
federation_sender_positions = sa.Table(
    "federation_sender_positions",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("position", BigInt, nullable=False),
)

# One row per destination we have queued something for: its back-off and transaction IDs.
federation_destinations = sa.Table(
    "federation_destinations",
    metadata,
    sa.Column("destination", sa.Text, primary_key=True),
    # 0 while the destination answers; else the current back-off, doubled at each failure.
    sa.Column("retry_interval_ms", BigInt, nullable=False),
    sa.Column("retry_at_ts", BigInt, nullable=False),  # not tried before this
    sa.Column("next_txn_id", BigInt, nullable=False),
    # Set by a failure, cleared by the next success: the queue is caught up (newest event of
    # each room only) before it is sent again.
    sa.Column("catching_up", sa.Boolean, nullable=False),
)

# PDUs waiting for a destination, in events-stream order.
federation_outbound_pdus = sa.Table(
    "federation_outbound_pdus",
    metadata,
    sa.Column("destination", sa.Text, primary_key=True),
    sa.Column("stream_ordering", BigInt, primary_key=True),
    sa.Column("room_id", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
)

# EDUs waiting for a destination, in the order they were queued. An EDU with a coalesce_key
# replaces the queued one of the same key (a typing or presence state superseded).
federation_outbound_edus = sa.Table(
    "federation_outbound_edus",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination", sa.Text, nullable=False),
    sa.Column("edu_type", sa.Text, nullable=False),
    sa.Column("content_json", sa.Text, nullable=False),
    sa.Column("coalesce_key", sa.Text, nullable=True),
    sa.Column("queued_ts", BigInt, nullable=False),
    sa.Index("ix_federation_outbound_edus_destination_id", "destination", "id"),
    sa.UniqueConstraint("destination", "coalesce_key"),
)

# The stream_id of the last m.device_list_update about a user sent to a destination: the
# next one's prev_id.
federation_device_list_sent = sa.Table(
    "federation_device_list_sent",
    metadata,
    sa.Column("destination", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("stream_id", BigInt, nullable=False),
)

# --- remote users' devices (issue 18) ---------------------------------------------------

# The device list of a remote user we share a room with, as their server announced it.
# stale: an update could not be applied (a gap) and the resync failed: ask the server, and
# try the resync again at resync_at_ts (NULL: not stale), backed off by resync_interval_ms.
remote_device_lists = sa.Table(
    "remote_device_lists",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("stream_id", BigInt, nullable=False),
    sa.Column("stale", sa.Boolean, nullable=False),
    sa.Column("updated_ts", BigInt, nullable=False),
    sa.Column("resync_interval_ms", BigInt, nullable=False, server_default="0"),
    sa.Column("resync_at_ts", BigInt, nullable=True, index=True),
)

# Stream IDs of the updates applied, per user: what a later update's prev_id may name.
remote_device_list_updates = sa.Table(
    "remote_device_list_updates",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("stream_id", BigInt, primary_key=True),
)

remote_devices = sa.Table(
    "remote_devices",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("keys_json", sa.Text, nullable=True),  # the signed device keys, if any
    sa.Column("display_name", sa.Text, nullable=True),
)

# master and self_signing keys of remote users (never a user-signing key).
remote_cross_signing_keys = sa.Table(
    "remote_cross_signing_keys",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("key_type", sa.Text, primary_key=True),
    sa.Column("key_json", sa.Text, nullable=False),
)
