"""backfilled events' counter

Revision ID: 0025
Revises: 0026
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0026"
branch_labels = None
depends_on = None

_POSITIONS = sa.table(
    "stream_positions", sa.column("stream", sa.Text), sa.column("position", sa.BigInteger)
)


def upgrade() -> None:
    # Events backfilled from other servers are numbered downwards from a base far below the
    # unserved events (homeserver/storage/schema/base.py BACKFILL_BASE); this counts them.
    op.bulk_insert(_POSITIONS, [{"stream": "backfilled_events", "position": 0}])


def downgrade() -> None:
    op.execute(_POSITIONS.delete().where(_POSITIONS.c.stream == "backfilled_events"))
