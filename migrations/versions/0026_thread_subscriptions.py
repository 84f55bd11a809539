"""thread subscriptions (MSC4306) and their stream

Revision ID: 0026
Revises: 0023
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0023"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_POSITIONS = sa.table(
    "stream_positions", sa.column("stream", sa.Text), sa.column("position", sa.BigInteger)
)


def upgrade() -> None:
    op.create_table(
        "thread_subscriptions",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("thread_root_id", sa.Text(), nullable=False),
        sa.Column("subscribed", sa.Boolean(), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("stream_id", BigInt, nullable=False),
        sa.Column("unsubscribed_at", BigInt, nullable=True),
        sa.PrimaryKeyConstraint(
            "user_id", "room_id", "thread_root_id", name=op.f("pk_thread_subscriptions")
        ),
    )
    op.create_index(
        op.f("ix_thread_subscriptions_user_id_stream_id"),
        "thread_subscriptions",
        ["user_id", "stream_id"],
        unique=False,
    )
    op.bulk_insert(_POSITIONS, [{"stream": "thread_subscriptions", "position": 0}])


def downgrade() -> None:
    op.execute(_POSITIONS.delete().where(_POSITIONS.c.stream == "thread_subscriptions"))
    op.drop_index(
        op.f("ix_thread_subscriptions_user_id_stream_id"), table_name="thread_subscriptions"
    )
    op.drop_table("thread_subscriptions")
