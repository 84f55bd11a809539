"""What the server's administrators set on accounts and rooms, and what they read about
sessions (the admin API, issue 22)."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# One row per account an administrator has acted on; an account without a row has every
# flag off. Read with the access token (tokens carry the flags), so a change reaches a
# worker's token cache within its lifetime, or at once on the worker that made it.
user_moderation = sa.Table(
    "user_moderation",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    # Sends look successful but reach nobody.
    sa.Column("shadow_banned", sa.Boolean, nullable=False, default=False),
    # spec v1.13 "Account suspension": 403 M_USER_SUSPENDED on sending, joining, profile...
    sa.Column("suspended", sa.Boolean, nullable=False, default=False),
    # spec v1.12 "Account locking": 401 M_USER_LOCKED (soft logout) on all but /logout.
    sa.Column("locked", sa.Boolean, nullable=False, default=False),
    # Deactivated with erase: the profile is gone and stays gone.
    sa.Column("erased", sa.Boolean, nullable=False, default=False),
    sa.Column("user_type", sa.Text, nullable=True),  # "bot", "support" or None
)

# Per-user rate limit of sending, replacing the configured one (0 and 0: not limited).
ratelimit_overrides = sa.Table(
    "ratelimit_overrides",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("messages_per_second", sa.Integer, nullable=False),
    sa.Column("burst_count", sa.Integer, nullable=False),
)

# Where and with what each device was seen: /admin/whois. One row per (device, address,
# user agent); written at most once per a few minutes per session (homeserver/admin/sessions).
user_ips = sa.Table(
    "user_ips",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("ip", sa.Text, primary_key=True),
    sa.Column("user_agent", sa.Text, primary_key=True),
    sa.Column("last_seen", BigInt, nullable=False),
)

# Room deletions (DELETE /_synapse/admin/v2/rooms/{roomId}): run in the background, their
# status read by ID or by room from any worker.
room_delete_tasks = sa.Table(
    "room_delete_tasks",
    metadata,
    sa.Column("delete_id", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, nullable=False, index=True),
    sa.Column("status", sa.Text, nullable=False),  # shutting_down, purging, complete, failed
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),  # kicked users, aliases, the new room
    sa.Column("created_ts", BigInt, nullable=False),
)

# The server-notices room of each user (POST /_synapse/admin/v1/send_server_notice).
server_notice_rooms = sa.Table(
    "server_notice_rooms",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("room_id", sa.Text, nullable=False),
)

# Media an administrator quarantined (served to nobody) or protected from quarantine, local
# or remote, by server name and media ID.
media_moderation = sa.Table(
    "media_moderation",
    metadata,
    sa.Column("media_origin", sa.Text, primary_key=True),
    sa.Column("media_id", sa.Text, primary_key=True),
    sa.Column("quarantined_by", sa.Text, nullable=True),
    sa.Column("quarantined_ts", BigInt, nullable=True),
    sa.Column("safe_from_quarantine", sa.Boolean, nullable=False, default=False),
)

# Redactions of a user's events (POST /_synapse/admin/v1/user/{userId}/redact): run in the
# background, their status read from any worker.
user_redactions = sa.Table(
    "user_redactions",
    metadata,
    sa.Column("redact_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # scheduled, active, completed, failed
    sa.Column("failed", sa.JSON, nullable=False),  # event ID -> why it was not redacted
    sa.Column("created_ts", BigInt, nullable=False),
)

# Rooms nobody of this server may join (PUT /_synapse/admin/v1/rooms/{roomId}/block).
blocked_rooms = sa.Table(
    "blocked_rooms",
    metadata,
    sa.Column("room_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),  # the administrator who blocked it
    sa.Column("blocked_ts", BigInt, nullable=False),
)
