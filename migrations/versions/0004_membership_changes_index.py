"""room memberships by room and position

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every sync wake-up asks which members of the user's rooms changed in a range of
    # positions (device lists): a range seek per room instead of a scan of its members.
    op.create_index(
        "ix_room_memberships_room_id_stream_ordering",
        "room_memberships",
        ["room_id", "stream_ordering"],
    )


def downgrade() -> None:
    op.drop_index("ix_room_memberships_room_id_stream_ordering", table_name="room_memberships")
