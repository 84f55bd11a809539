"""Third-party identifiers: addresses on accounts, validation sessions."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

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
