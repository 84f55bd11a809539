"""content reports

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Reports of rooms (spec v1.13), events and users (v1.14), kept for administrators.
    op.create_table(
        "content_reports",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("reporter", sa.Text, nullable=False),
        sa.Column("room_id", sa.Text, nullable=True),
        sa.Column("event_id", sa.Text, nullable=True),
        sa.Column("user_id", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_content_reports"),
    )
    op.create_index("ix_content_reports_created_ts", "content_reports", ["created_ts"])


def downgrade() -> None:
    op.drop_index("ix_content_reports_created_ts", table_name="content_reports")
    op.drop_table("content_reports")
