"""media retention: indexes on the times it goes by

Revision ID: 0031
Revises: 0028
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0031"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The retention job selects local media whose last access (else creation) is older than
    # the lifetime, and deletion by age media created before a time; without these each
    # round reads the whole table.
    op.create_index("ix_media_last_access_ts", "media", ["last_access_ts", "created_ts"])
    op.create_index("ix_media_created_ts", "media", ["created_ts"])


def downgrade() -> None:
    op.drop_index("ix_media_created_ts", table_name="media")
    op.drop_index("ix_media_last_access_ts", table_name="media")
