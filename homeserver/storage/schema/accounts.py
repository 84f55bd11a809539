"""Accounts: users, profiles, devices, tokens, registration, UIA, stored filters."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# --- accounts ---------------------------------------------------------------------------

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=True),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("deactivated", sa.Boolean, nullable=False, default=False),
    sa.Column("created_ts", BigInt, nullable=False),
    # A guest account (spec: guest access) until it is upgraded by a registration.
    sa.Column("is_guest", sa.Boolean, nullable=False, server_default=sa.false()),
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

# OpenID tokens (POST /user/{userId}/openid/request_token): a third party hands one to
# /_matrix/federation/v1/openid/userinfo to learn who the user is. Stored as a hash.
openid_tokens = sa.Table(
    "openid_tokens",
    metadata,
    sa.Column("token_hash", sa.LargeBinary, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("valid_until_ms", BigInt, nullable=False, index=True),
)

# Login tokens (POST /login/get_token, m.login.token): single use, short-lived, hashed.
login_tokens = sa.Table(
    "login_tokens",
    metadata,
    sa.Column("token_hash", sa.LargeBinary, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("valid_until_ms", BigInt, nullable=False, index=True),
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
    # The OAuth client the session was granted to: only it may refresh (RFC 6749 6); null
    # for sessions of /login and /register, which refresh through /refresh.
    sa.Column("oauth_client_id", sa.Text, nullable=True),
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
