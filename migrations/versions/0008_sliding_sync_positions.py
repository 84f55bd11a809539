"""sliding sync connection positions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Simplified sliding sync (MSC4186) keeps what each connection was sent, per response
    # position, so that a connection survives a restart and works across workers.
    op.create_table(
        "sliding_sync_positions",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("conn_id", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sliding_sync_positions"),
        # IDs are never reused (an old pos must not name a newer position).
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_sliding_sync_positions_created_ts", "sliding_sync_positions", ["created_ts"]
    )
    op.create_index(
        "ix_sliding_sync_positions_user_id_device_id_conn_id",
        "sliding_sync_positions",
        ["user_id", "device_id", "conn_id"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_sliding_sync_positions_user_id_device_id_conn_id",
        table_name="sliding_sync_positions",
    )
    op.drop_index("ix_sliding_sync_positions_created_ts", table_name="sliding_sync_positions")
    op.drop_table("sliding_sync_positions")
