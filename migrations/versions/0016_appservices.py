"""application services

Revision ID: 0016
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0011"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Each application service's cursors, last transaction number and back-off (issue 22).
    op.create_table(
        "appservice_state",
        sa.Column("service_id", sa.Text(), nullable=False),
        sa.Column("events_cursor", BigInt, nullable=False),
        sa.Column("receipts_cursor", BigInt, nullable=False),
        sa.Column("typing_cursor", BigInt, nullable=False),
        sa.Column("presence_cursor", BigInt, nullable=False),
        sa.Column("to_device_cursor", BigInt, nullable=False),
        sa.Column("last_txn_id", BigInt, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_ts", BigInt, nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_until_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("service_id", name=op.f("pk_appservice_state")),
    )
    # Transactions queued for a service and not yet acknowledged.
    op.create_table(
        "appservice_txns",
        sa.Column("service_id", sa.Text(), nullable=False),
        sa.Column("txn_id", BigInt, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("service_id", "txn_id", name=op.f("pk_appservice_txns")),
    )


def downgrade() -> None:
    op.drop_table("appservice_txns")
    op.drop_table("appservice_state")
