"""backward extremities

Revision ID: 0013
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Events named as prev_events by events of the room graph but not held (issue 17):
    # where backfill starts.
    op.create_table(
        "event_backward_extremities",
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "event_id", name=op.f("pk_event_backward_extremities")),
    )


def downgrade() -> None:
    op.drop_table("event_backward_extremities")
