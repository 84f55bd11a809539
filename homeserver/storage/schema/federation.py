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
