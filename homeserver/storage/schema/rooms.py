"""Rooms and events: the room graph, events, state, memberships, aliases."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

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

# Where the room's history we hold stops: events that events of the graph name as a
# prev_event but that we lack (or hold only as outliers). Backfill asks for what lies before
# them; a row goes when its event takes its place in the graph.
event_backward_extremities = sa.Table(
    "event_backward_extremities",
    metadata,
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
)

# Redactions from other servers that arrived before the event they redact (issue 17): the
# redaction is applied when its target is persisted. ``any_sender`` when the redaction may
# redact anyone's event (room versions 1-2, whose auth rules checked it, or a sender with the
# redact level in the state before it); otherwise only an event whose sender shares the
# redaction sender's server. Rows stay after the target arrives, so an outlier later stored
# again in the graph is redacted again.
pending_redactions = sa.Table(
    "pending_redactions",
    metadata,
    sa.Column("target_id", sa.Text, primary_key=True),
    sa.Column("redaction_id", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, nullable=False),
    sa.Column("sender", sa.Text, nullable=False),
    sa.Column("any_sender", sa.Boolean, nullable=False),
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

# The chain cover index of the auth graph (homeserver/storage/events/chains.py): each state
# event's place on a chain (a line of auth events of one type and state key), ...
event_auth_chains = sa.Table(
    "event_auth_chains",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("chain_id", sa.Text, nullable=False),  # the event ID of the chain's first event
    sa.Column("sequence_number", sa.Integer, nullable=False),
    sa.UniqueConstraint("chain_id", "sequence_number"),
)

# ... the links between chains: from (origin chain, sequence number) on, an event reaches
# the target chain up to that sequence number ...
event_auth_chain_links = sa.Table(
    "event_auth_chain_links",
    metadata,
    sa.Column("origin_chain_id", sa.Text, primary_key=True),
    sa.Column("target_chain_id", sa.Text, primary_key=True),
    sa.Column("origin_sequence_number", sa.Integer, primary_key=True),
    sa.Column("target_sequence_number", sa.Integer, primary_key=True),
)

# ... and the state events not on a chain yet: some of their auth events are not indexed.
event_auth_chain_to_calculate = sa.Table(
    "event_auth_chain_to_calculate",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, nullable=False, index=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("state_key", sa.Text, nullable=False),
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
    # A room's timeline in topological order (/messages, /context).
    sa.Index(None, "room_id", "depth", "stream_ordering"),
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

# Unread counts start after the user's own latest event in a room (spec: sending an event
# moves the read receipt), found through this index rather than by scanning the room.
sa.Index(None, events.c.room_id, events.c.sender, events.c.stream_ordering)

# GET /rooms/{roomId}/timestamp_to_event: the event closest to a time, without a scan.
sa.Index(None, events.c.room_id, events.c.origin_server_ts)
