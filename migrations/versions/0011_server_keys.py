"""server keys

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Other servers' signing keys, fetched directly or through notaries (issue 18).
    op.create_table(
        "server_keys",
        sa.Column("server_name", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("verify_key", sa.Text(), nullable=False),
        sa.Column(
            "valid_until_ts", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "expired_ts", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "fetched_ts", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("from_server", sa.Text(), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("server_name", "key_id", name=op.f("pk_server_keys")),
    )


def downgrade() -> None:
    op.drop_table("server_keys")
