"""End-to-end encryption: device keys, cross-signing, device lists, key backup."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

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
