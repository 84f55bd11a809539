"""the cache invalidation stream: what one worker dropped from a cache, for the others

Revision ID: 0030
Revises: 0032
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0032"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cache_invalidations",
        sa.Column("position", BigInt, primary_key=True, autoincrement=True),
        sa.Column("cache", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("ts", BigInt, nullable=False),
    )
    op.create_index("ix_cache_invalidations_ts", "cache_invalidations", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_cache_invalidations_ts", "cache_invalidations")
    op.drop_table("cache_invalidations")
