"""The OAuth 2.0 API (issue 23): registered clients, authorization codes."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# Clients registered dynamically (RFC 7591): public clients, the metadata as given (JSON).
oauth_clients = sa.Table(
    "oauth_clients",
    metadata,
    sa.Column("client_id", sa.Text, primary_key=True),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("created_ts", BigInt, nullable=False),
)

# Authorization codes, by their SHA-256: short-lived, taken once (the row goes when used).
oauth_codes = sa.Table(
    "oauth_codes",
    metadata,
    sa.Column("code_hash", sa.LargeBinary, primary_key=True),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("code_challenge", sa.Text, nullable=False),
    sa.Column("expires_ts", BigInt, nullable=False, index=True),
)

# Device authorization grants (RFC 8628): the device code by its SHA-256, the user code the
# person types; ``user_id`` is set when they approve, ``denied`` when they refuse.
oauth_device_grants = sa.Table(
    "oauth_device_grants",
    metadata,
    sa.Column("device_code_hash", sa.LargeBinary, primary_key=True),
    sa.Column("user_code", sa.Text, nullable=False, unique=True),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("expires_ts", BigInt, nullable=False, index=True),
    sa.Column("interval_ms", BigInt, nullable=False),
    sa.Column("last_poll_ts", BigInt, nullable=True),
    sa.Column("user_id", sa.Text, nullable=True),
    sa.Column("denied", sa.Boolean, nullable=False),
)

# Single sign-on through upstream OpenID Connect providers: a browser's sign-in in progress
# (its cookie holds the ID; ``claims`` are set once the provider answered and a username is
# still to be chosen), and the link of a provider's subject to an account. The login tokens
# it hands out for m.login.token are those of POST /login/get_token (schema/accounts.py).
sso_sessions = sa.Table(
    "sso_sessions",
    metadata,
    sa.Column("session_hash", sa.LargeBinary, primary_key=True),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("nonce", sa.Text, nullable=False),
    sa.Column("code_verifier", sa.Text, nullable=False),
    sa.Column("redirect_url", sa.Text, nullable=False),
    sa.Column("claims", sa.Text, nullable=True),
    sa.Column("expires_ts", BigInt, nullable=False, index=True),
)

sso_links = sa.Table(
    "sso_links",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("subject", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False, index=True),
)

# Browser sessions of the account management pages, by their cookie's SHA-256.
oauth_browser_sessions = sa.Table(
    "oauth_browser_sessions",
    metadata,
    sa.Column("token_hash", sa.LargeBinary, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("expires_ts", BigInt, nullable=False, index=True),
)
