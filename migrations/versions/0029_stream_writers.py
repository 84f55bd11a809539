"""positions from several writers: per-stream sequences and each writer's position

Revision ID: 0029
Revises: 0030
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0030"
branch_labels = None
depends_on = None

# The streams of a sync token (homeserver/core/streams.py Stream), as of this revision.
_STREAMS = (
    "events",
    "account_data",
    "receipts",
    "typing",
    "presence",
    "to_device",
    "device_lists",
    "one_time_keys",
    "thread_subscriptions",
)


def upgrade() -> None:
    op.create_table(
        "stream_writers",
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("writer", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("idle", sa.Boolean(), nullable=False),
        sa.Column(
            "heartbeat_ms", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.PrimaryKeyConstraint("stream", "writer", name=op.f("pk_stream_writers")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has one writer: positions stay a counter row each
    for stream in _STREAMS:
        # Positions are taken from a sequence per stream (no row lock across a transaction),
        # starting after the last one the counter row gave.
        op.execute(f"CREATE SEQUENCE IF NOT EXISTS stream_seq_{stream}")
        op.execute(
            f"SELECT setval('stream_seq_{stream}', greatest(1, coalesce("
            f"(SELECT position FROM stream_positions WHERE stream = '{stream}'), 0)), "
            f"coalesce((SELECT position FROM stream_positions WHERE stream = '{stream}'), 0) > 0)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for stream in _STREAMS:
            op.execute(f"DROP SEQUENCE IF EXISTS stream_seq_{stream}")
    op.drop_table("stream_writers")
