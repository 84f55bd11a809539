"""a stream position for one-time key changes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_POSITIONS = sa.table(
    "stream_positions", sa.column("stream", sa.Text), sa.column("position", sa.BigInteger)
)


def upgrade() -> None:
    # Uploads and claims of one-time and fallback keys take a position on it, so that a sync
    # can keep a device's key counts until it moves (homeserver/e2ee/keys.py).
    op.bulk_insert(_POSITIONS, [{"stream": "one_time_keys", "position": 0}])


def downgrade() -> None:
    op.execute(_POSITIONS.delete().where(_POSITIONS.c.stream == "one_time_keys"))
