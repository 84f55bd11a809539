"""delayed events: the events position they were scheduled at

Revision ID: 0022
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0014"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # MSC4140: a delayed state event is cancelled by a state event of another user at the
    # same type and state key sent after it was scheduled. NULL (scheduled before this
    # revision): never cancelled that way.
    with op.batch_alter_table("delayed_events") as batch:
        batch.add_column(sa.Column("after_position", BigInt, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delayed_events") as batch:
        batch.drop_column("after_position")
