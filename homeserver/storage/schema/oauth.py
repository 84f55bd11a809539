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
