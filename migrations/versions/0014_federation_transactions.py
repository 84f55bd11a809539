"""federation transactions, outbound queue, remote device lists

Revision ID: 0014
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0020"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Inbound transactions (issue 18): answered again, not processed again.
    op.create_table(
        "federation_inbound_txns",
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("txn_id", sa.Text(), nullable=False),
        sa.Column("response_json", sa.Text(), nullable=False),
        sa.Column("received_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("origin", "txn_id", name=op.f("pk_federation_inbound_txns")),
    )
    op.create_index(
        op.f("ix_federation_inbound_txns_received_ts"),
        "federation_inbound_txns",
        ["received_ts"],
    )
    # The outbound sender: its cursor, destinations, queues.
    op.create_table(
        "federation_sender_positions",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_federation_sender_positions")),
    )
    op.create_table(
        "federation_destinations",
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("retry_interval_ms", BigInt, nullable=False),
        sa.Column("retry_at_ts", BigInt, nullable=False),
        sa.Column("next_txn_id", BigInt, nullable=False),
        sa.Column("catching_up", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("destination", name=op.f("pk_federation_destinations")),
    )
    op.create_table(
        "federation_outbound_pdus",
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("stream_ordering", BigInt, nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "destination", "stream_ordering", name=op.f("pk_federation_outbound_pdus")
        ),
    )
    op.create_table(
        "federation_outbound_edus",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("edu_type", sa.Text(), nullable=False),
        sa.Column("content_json", sa.Text(), nullable=False),
        sa.Column("coalesce_key", sa.Text(), nullable=True),
        sa.Column("queued_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federation_outbound_edus")),
        sa.UniqueConstraint(
            "destination",
            "coalesce_key",
            name=op.f("uq_federation_outbound_edus_destination_coalesce_key"),
        ),
    )
    op.create_index(
        "ix_federation_outbound_edus_destination_id",
        "federation_outbound_edus",
        ["destination", "id"],
    )
    op.create_table(
        "federation_device_list_sent",
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("stream_id", BigInt, nullable=False),
        sa.PrimaryKeyConstraint(
            "destination", "user_id", name=op.f("pk_federation_device_list_sent")
        ),
    )
    # Remote users' devices, kept from their servers' m.device_list_update EDUs.
    op.create_table(
        "remote_device_lists",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("stream_id", BigInt, nullable=False),
        sa.Column("stale", sa.Boolean(), nullable=False),
        sa.Column("updated_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_remote_device_lists")),
    )
    op.create_table(
        "remote_device_list_updates",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("stream_id", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "stream_id", name=op.f("pk_remote_device_list_updates")),
    )
    op.create_table(
        "remote_devices",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("device_id", sa.Text(), nullable=False),
        sa.Column("keys_json", sa.Text(), nullable=True),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "device_id", name=op.f("pk_remote_devices")),
    )
    op.create_table(
        "remote_cross_signing_keys",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("key_type", sa.Text(), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key_type", name=op.f("pk_remote_cross_signing_keys")),
    )


def downgrade() -> None:
    for table in (
        "remote_cross_signing_keys",
        "remote_devices",
        "remote_device_list_updates",
        "remote_device_lists",
        "federation_device_list_sent",
        "federation_outbound_edus",
        "federation_outbound_pdus",
        "federation_destinations",
        "federation_sender_positions",
        "federation_inbound_txns",
    ):
        op.drop_table(table)
