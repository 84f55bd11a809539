"""The one schema, as SQLAlchemy Core tables; Alembic migrations are generated from it."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

stream_positions = sa.Table(
    "stream_positions",
    metadata,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("position", BigInt, nullable=False),
)
# Not a stream: the row that numbers events never served (outliers, rejected, soft-failed)
# downwards from 0, below every position of the events stream, so that no read of the
# stream meets them.
UNSERVED_EVENTS = "unserved_events"

# --- accounts ---------------------------------------------------------------------------

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=True),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("deactivated", sa.Boolean, nullable=False, default=False),
    sa.Column("created_ts", BigInt, nullable=False),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("displayname", sa.Text, nullable=True),
    sa.Column("avatar_url", sa.Text, nullable=True),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("display_name", sa.Text, nullable=True),
    sa.Column("created_ts", BigInt, nullable=False),
    sa.Column("last_seen_ts", BigInt, nullable=True),
    sa.Column("last_seen_ip", sa.Text, nullable=True),
)

access_tokens = sa.Table(
    "access_tokens",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("user_id", sa.Text, nullable=False, index=True),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("created_ts", BigInt, nullable=False),
    sa.Column("valid_until_ms", BigInt, nullable=True),
    sa.Column("refresh_token_id", BigInt, nullable=True),
    sa.Index(None, "user_id", "device_id"),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("created_ts", BigInt, nullable=False),
    # Set once the token has been exchanged; a second use of it is refused.
    sa.Column("next_token_id", BigInt, nullable=True),
    sa.Index(None, "user_id", "device_id"),
)

registration_tokens = sa.Table(
    "registration_tokens",
    metadata,
    sa.Column("token", sa.Text, primary_key=True),
    sa.Column("uses_allowed", sa.Integer, nullable=True),
    sa.Column("pending", sa.Integer, nullable=False, default=0),
    sa.Column("completed", sa.Integer, nullable=False, default=0),
    sa.Column("expiry_time", BigInt, nullable=True),
)

uia_sessions = sa.Table(
    "uia_sessions",
    metadata,
    sa.Column("session_id", sa.Text, primary_key=True),
    sa.Column("created_ts", BigInt, nullable=False),
    sa.Column("completed", sa.JSON, nullable=False),  # stage types done, in order
    sa.Column("params", sa.JSON, nullable=False),  # what stages remembered (user, token)
    sa.Column("request_fingerprint", sa.Text, nullable=False),  # method and path it protects
)

filters = sa.Table(
    "filters",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("filter_id", BigInt, primary_key=True),
    sa.Column("filter_json", sa.JSON, nullable=False),
)

# --- rooms and events ---------------------------------------------------------------------

rooms = sa.Table(
    "rooms",
    metadata,
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("room_version", sa.Text, nullable=False),
    sa.Column("creator", sa.Text, nullable=False),
    sa.Column("created_ts", BigInt, nullable=False),
    sa.Column("is_public", sa.Boolean, nullable=False, default=False),  # in the room directory
    # The last event added to the room's graph, with its depth: a local send compares and
    # swaps it, so it stands for the forward extremities the sender built on (each event
    # that changes them replaces it). Also the "last known event" a room upgrade names.
    sa.Column("latest_event_id", sa.Text, nullable=True),
    sa.Column("current_depth", BigInt, nullable=False, default=0),
    # The room's current state (that of its forward extremities, resolved).
    sa.Column("current_state_group", BigInt, nullable=True),
)

# The room's events that no event points at yet: the next local event's prev_events.
event_forward_extremities = sa.Table(
    "event_forward_extremities",
    metadata,
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
)

# The room's graph: one row per prev_event of each event (outliers have none).
event_edges = sa.Table(
    "event_edges",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("prev_event_id", sa.Text, primary_key=True),
    sa.Index(None, "prev_event_id"),  # an event's children: is it still an extremity
)

# The auth graph: one row per auth_event of each event. Auth chains are its closures
# (a recursive query, EventStore.get_auth_chain).
event_auth = sa.Table(
    "event_auth",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("auth_id", sa.Text, primary_key=True),
)

# Events refused by the auth rules, kept so that they are not fetched and checked again;
# never served, never the auth event of another (spec, "Rejected events").
rejections = sa.Table(
    "rejections",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("rejected_ts", BigInt, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("stream_ordering", BigInt, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.Text, nullable=False, unique=True),
    sa.Column("room_id", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("state_key", sa.Text, nullable=True),
    sa.Column("sender", sa.Text, nullable=False),
    sa.Column("depth", BigInt, nullable=False),
    sa.Column("origin_server_ts", BigInt, nullable=False),
    sa.Column("json", sa.Text, nullable=False),  # the PDU, as signed
    # What clients see in ``unsigned`` that never changes (prev_content, replaces_state).
    sa.Column("unsigned_json", sa.Text, nullable=True),
    # The state after this event (for a state event, including it).
    sa.Column("state_group", BigInt, nullable=False),
    sa.Column("redacted_by", sa.Text, nullable=True),
    # The sending device and its transaction ID, echoed to that device only (spec: unsigned).
    sa.Column("device_id", sa.Text, nullable=True),
    sa.Column("txn_id", sa.Text, nullable=True),
    # Known without its place in the graph (an auth event fetched on its own): no edges, no
    # state group of its own, never served from the timeline.
    sa.Column("outlier", sa.Boolean, nullable=False, server_default=sa.false()),
    # Passed the auth rules against the state before it but not against the room's current
    # state (spec, "Soft failure"): stored, never served, never a forward extremity.
    sa.Column("soft_failed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index(None, "room_id", "stream_ordering"),
)

event_txns = sa.Table(
    "event_txns",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("scope", sa.Text, primary_key=True),  # the endpoint: send, redact
    sa.Column("txn_id", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("created_ts", BigInt, nullable=False),
)

state_groups = sa.Table(
    "state_groups",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("room_id", sa.Text, nullable=False),
    # The group this one changes (its state before the change); NULL for the first.
    sa.Column("prev_group", BigInt, nullable=True),
    # A snapshot holds all of the state; other groups hold only their delta from prev_group.
    sa.Column("is_snapshot", sa.Boolean, nullable=False),
    sa.Column("chain_length", sa.Integer, nullable=False),  # deltas since the last snapshot
)

state_group_entries = sa.Table(
    "state_group_entries",
    metadata,
    sa.Column("state_group", BigInt, primary_key=True),
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("state_key", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, nullable=False),
)

current_state = sa.Table(
    "current_state",
    metadata,
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("state_key", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, nullable=False),
)

room_memberships = sa.Table(
    "room_memberships",
    metadata,
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("membership", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("sender", sa.Text, nullable=False),
    sa.Column("stream_ordering", BigInt, nullable=False),
    sa.Column("forgotten", sa.Boolean, nullable=False, default=False),
    sa.Column("displayname", sa.Text, nullable=True),
    sa.Column("avatar_url", sa.Text, nullable=True),
    sa.Index(None, "user_id", "membership"),
    sa.Index(None, "room_id", "stream_ordering"),  # membership changes in a range
)

room_aliases = sa.Table(
    "room_aliases",
    metadata,
    sa.Column("alias", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, nullable=False, index=True),
    sa.Column("creator", sa.Text, nullable=False),
)

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

# Unread counts start after the user's own latest event in a room (spec: sending an event
# moves the read receipt), found through this index rather than by scanning the room.
sa.Index(None, events.c.room_id, events.c.sender, events.c.stream_ordering)

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

# --- end-to-end encryption: device keys, cross-signing, device lists, backup (issue 7) ---------

# The device's identity keys as uploaded and signed by the device (without `unsigned`).
e2e_device_keys = sa.Table(
    "e2e_device_keys",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("key_json", sa.Text, nullable=False),  # canonical JSON
)

# Claimed keys are deleted. `id` orders them by upload (spec: given out in upload order).
e2e_one_time_keys = sa.Table(
    "e2e_one_time_keys",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("algorithm", sa.Text, nullable=False),
    sa.Column("key_id", sa.Text, nullable=False),
    sa.Column("key_json", sa.Text, nullable=False),  # canonical JSON: a string or an object
    sa.UniqueConstraint("user_id", "device_id", "algorithm", "key_id"),
)

# One fallback key per device and algorithm; handed out (and marked used) when no one-time
# key is left, until the device replaces it.
e2e_fallback_keys = sa.Table(
    "e2e_fallback_keys",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("algorithm", sa.Text, primary_key=True),
    sa.Column("key_id", sa.Text, nullable=False),
    sa.Column("key_json", sa.Text, nullable=False),
    sa.Column("used", sa.Boolean, nullable=False, default=False),
)

# A user's current master, self-signing and user-signing keys.
e2e_cross_signing_keys = sa.Table(
    "e2e_cross_signing_keys",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("key_type", sa.Text, primary_key=True),  # master, self_signing, user_signing
    sa.Column("public_key", sa.Text, nullable=False),  # unpadded base64 ed25519
    sa.Column("key_json", sa.Text, nullable=False),
)

# Signatures uploaded through /keys/signatures/upload, verified before they were stored.
# The target is a device (its device ID) or a cross-signing key (its public key).
e2e_signatures = sa.Table(
    "e2e_signatures",
    metadata,
    sa.Column("target_user_id", sa.Text, primary_key=True),
    sa.Column("target_key_id", sa.Text, primary_key=True),
    sa.Column("signer_user_id", sa.Text, primary_key=True),
    sa.Column("signer_key_id", sa.Text, primary_key=True),  # ed25519:<device or public key>
    sa.Column("signature", sa.Text, nullable=False),
)

# The device-lists position of each user's latest change of devices or keys.
device_list_changes = sa.Table(
    "device_list_changes",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("stream_position", BigInt, nullable=False, index=True),
)

# Server-side key backup versions; a deleted one keeps its row so its number is never reused.
room_key_backup_versions = sa.Table(
    "room_key_backup_versions",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("version", BigInt, primary_key=True, autoincrement=False),
    sa.Column("algorithm", sa.Text, nullable=False),
    sa.Column("auth_data", sa.JSON, nullable=False),
    sa.Column("etag", BigInt, nullable=False),  # bumped whenever the keys change
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
)

room_key_backup_keys = sa.Table(
    "room_key_backup_keys",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("version", BigInt, primary_key=True),
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("session_id", sa.Text, primary_key=True),
    sa.Column("first_message_index", BigInt, nullable=False),
    sa.Column("forwarded_count", BigInt, nullable=False),
    sa.Column("is_verified", sa.Boolean, nullable=False),
    sa.Column("session_data", sa.JSON, nullable=False),
)

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

# --- third-party identifiers (issue 6) -----------------------------------------------------

# Addresses bound to accounts (medium "email", the address in lower case); an address belongs
# to one account at most: login, password reset and e-mail pushers go by it.
user_threepids = sa.Table(
    "user_threepids",
    metadata,
    sa.Column("medium", sa.Text, primary_key=True),
    sa.Column("address", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False, index=True),
    sa.Column("validated_at", BigInt, nullable=False),
    sa.Column("added_at", BigInt, nullable=False),
)

# A requestToken's session (spec: the "sid"), the homeserver acting as its own identity
# server: one per client_secret, address and purpose (adding the address, resetting a
# password), validated by a mailed token, used up by the request it authorises.
threepid_sessions = sa.Table(
    "threepid_sessions",
    metadata,
    sa.Column("session_id", sa.Text, primary_key=True),
    sa.Column("purpose", sa.Text, nullable=False),  # add, password_reset
    sa.Column("medium", sa.Text, nullable=False),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("client_secret", sa.Text, nullable=False),
    sa.Column("last_send_attempt", BigInt, nullable=False),
    sa.Column("next_link", sa.Text, nullable=True),
    sa.Column("created_ts", BigInt, nullable=False),
    sa.Column("validated_ts", BigInt, nullable=True),
    sa.Column("expires_ts", BigInt, nullable=False, index=True),
    sa.UniqueConstraint("client_secret", "medium", "address", "purpose"),
)

# The tokens mailed for a session (each mail has its own; an earlier mail's link keeps
# working until it expires), stored as SHA-256 hashes.
threepid_tokens = sa.Table(
    "threepid_tokens",
    metadata,
    sa.Column("token_hash", sa.LargeBinary, primary_key=True),
    sa.Column("session_id", sa.Text, nullable=False, index=True),
    sa.Column("expires_ts", BigInt, nullable=False),
)

# --- media repository (issue 5) --------------------------------------------------------------

# Local media: one row per mxc://<server_name>/<media_id>. Content is stored once per sha256
# (identical uploads share it); a row from POST /media/v1/create has no upload_ts until its
# content arrives, and lapses at expires_ts. Remote media (federation) gets its own table.
media = sa.Table(
    "media",
    metadata,
    sa.Column("media_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),  # the uploader
    sa.Column("created_ts", BigInt, nullable=False),
    sa.Column("expires_ts", BigInt, nullable=True),  # pending IDs only
    sa.Column("upload_ts", BigInt, nullable=True),  # None: created, content not yet uploaded
    sa.Column("content_type", sa.Text, nullable=True),
    sa.Column("upload_name", sa.Text, nullable=True),
    sa.Column("size", BigInt, nullable=True),
    sa.Column("sha256", sa.Text, nullable=True, index=True),  # hex; names the stored content
    # Images only, read from the header at upload: thumbnail sizes are computed from them.
    sa.Column("width", sa.Integer, nullable=True),
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("animated", sa.Boolean, nullable=False, default=False),
    # Quotas sum a user's sizes; pending uploads are counted per user.
    sa.Index(None, "user_id", "upload_ts"),
)

# Thumbnails belong to content (sha256), not to a media ID: identical uploads share them.
# width and height are the thumbnail's own, so two requests that give the same image share it.
media_thumbnails = sa.Table(
    "media_thumbnails",
    metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("width", sa.Integer, primary_key=True),
    sa.Column("height", sa.Integer, primary_key=True),
    sa.Column("method", sa.Text, primary_key=True),  # crop, scale
    sa.Column("animated", sa.Boolean, primary_key=True),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("size", BigInt, nullable=False),
    sa.Column("created_ts", BigInt, nullable=False),
)

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
)

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
