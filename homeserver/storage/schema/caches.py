"""The cache invalidation stream (issue 21): what a worker dropped from a cache that every
worker keeps (access tokens, ignore lists, push rules, kept memberships), so that the others
drop it too. Workers read it on a wake-up and on a short poll; old rows are pruned."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

cache_invalidations = sa.Table(
    "cache_invalidations",
    metadata,
    sa.Column("position", BigInt, primary_key=True, autoincrement=True),
    sa.Column("cache", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("ts", BigInt, nullable=False, index=True),
)
