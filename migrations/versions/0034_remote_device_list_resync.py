"""remote device lists: when a stale list's resync is tried again, and its back-off

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # A stale list (its resync failed) is fetched again from its user's server on a timer,
    # backed off per user. Stale lists of before this revision: retried at once (0).
    with op.batch_alter_table("remote_device_lists") as batch:
        batch.add_column(
            sa.Column("resync_interval_ms", BigInt, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("resync_at_ts", BigInt, nullable=True))
    op.execute("UPDATE remote_device_lists SET resync_at_ts = 0 WHERE stale")
    op.create_index(
        op.f("ix_remote_device_lists_resync_at_ts"), "remote_device_lists", ["resync_at_ts"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_remote_device_lists_resync_at_ts"), table_name="remote_device_lists")
    with op.batch_alter_table("remote_device_lists") as batch:
        batch.drop_column("resync_at_ts")
        batch.drop_column("resync_interval_ms")
