"""media retention: indexes on the times it goes by; application services' room lists

Revision ID: 0031
Revises: 0029
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The retention job selects local media whose last access (else creation) is older than
    # the lifetime, and deletion by age media created before a time; without these each
    # round reads the whole table.
    op.create_index("ix_media_last_access_ts", "media", ["last_access_ts", "created_ts"])
    op.create_index("ix_media_created_ts", "media", ["created_ts"])
    # Rooms published by application services in their networks' directories.
    op.create_table(
        "appservice_room_list",
        sa.Column("appservice_id", sa.Text(), nullable=False),
        sa.Column("network_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "appservice_id", "network_id", "room_id", name=op.f("pk_appservice_room_list")
        ),
    )
    op.create_index(op.f("ix_appservice_room_list_room_id"), "appservice_room_list", ["room_id"])


def downgrade() -> None:
    op.drop_table("appservice_room_list")
    op.drop_index("ix_media_created_ts", table_name="media")
    op.drop_index("ix_media_last_access_ts", table_name="media")
