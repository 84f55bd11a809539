"""events in topological order

Revision ID: 0012
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # /messages, /context and pagination tokens order a room's timeline by depth, then
    # stream ordering (homeserver/storage/events/reading.py, get_timeline): an index range
    # in that order, so that a page stops after its rows instead of sorting the room.
    op.create_index(
        "ix_events_room_id_depth_stream_ordering", "events", ["room_id", "depth", "stream_ordering"]
    )


def downgrade() -> None:
    op.drop_index("ix_events_room_id_depth_stream_ordering", table_name="events")
