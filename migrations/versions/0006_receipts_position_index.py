"""receipts by stream position

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Woken syncs keep each user's unread counts and ask whose read receipts moved after a
    # position (homeserver/push/unread.py): a range seek instead of a scan of every receipt.
    op.create_index("ix_receipts_stream_position", "receipts", ["stream_position"])


def downgrade() -> None:
    op.drop_index("ix_receipts_stream_position", table_name="receipts")
