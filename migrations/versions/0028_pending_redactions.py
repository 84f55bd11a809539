"""redactions waiting for their target

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A redaction from another server that arrived before the event it redacts (issue 17):
    # applied when the target is persisted.
    op.create_table(
        "pending_redactions",
        sa.Column("target_id", sa.Text(), nullable=False),
        sa.Column("redaction_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("any_sender", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("target_id", "redaction_id", name=op.f("pk_pending_redactions")),
    )


def downgrade() -> None:
    op.drop_table("pending_redactions")
