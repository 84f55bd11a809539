"""delayed events

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # MSC4140: events sent later, kept so that they are sent after a restart too.
    op.create_table(
        "delayed_events",
        sa.Column("delay_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("room_id", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("state_key", sa.Text, nullable=True),
        sa.Column("content", sa.JSON, nullable=False),
        sa.Column("delay", BigInt, nullable=False),
        sa.Column("send_at", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("delay_id", name="pk_delayed_events"),
    )
    op.create_index("ix_delayed_events_user_id", "delayed_events", ["user_id"])
    op.create_index("ix_delayed_events_send_at", "delayed_events", ["send_at"])


def downgrade() -> None:
    op.drop_index("ix_delayed_events_send_at", table_name="delayed_events")
    op.drop_index("ix_delayed_events_user_id", table_name="delayed_events")
    op.drop_table("delayed_events")
