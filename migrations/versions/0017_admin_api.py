"""admin api: account moderation, rate-limit overrides, sessions, blocked rooms

Revision ID: 0017
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0019"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # What administrators set on accounts (issue 22): shadow-ban, suspension, lock, erasure.
    op.create_table(
        "user_moderation",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("shadow_banned", sa.Boolean(), nullable=False),
        sa.Column("suspended", sa.Boolean(), nullable=False),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column("erased", sa.Boolean(), nullable=False),
        sa.Column("user_type", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_moderation")),
    )
    op.create_table(
        "ratelimit_overrides",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("messages_per_second", sa.Integer(), nullable=False),
        sa.Column("burst_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_ratelimit_overrides")),
    )
    op.create_table(
        "user_ips",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("device_id", sa.Text(), nullable=False),
        sa.Column("ip", sa.Text(), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=False),
        sa.Column("last_seen", _BIGINT, nullable=False),
        sa.PrimaryKeyConstraint(
            "user_id", "device_id", "ip", "user_agent", name=op.f("pk_user_ips")
        ),
    )
    op.create_table(
        "room_delete_tasks",
        sa.Column("delete_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_ts", _BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("delete_id", name=op.f("pk_room_delete_tasks")),
    )
    op.create_index(
        op.f("ix_room_delete_tasks_room_id"), "room_delete_tasks", ["room_id"], unique=False
    )
    op.create_table(
        "server_notice_rooms",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_server_notice_rooms")),
    )
    op.create_table(
        "media_moderation",
        sa.Column("media_origin", sa.Text(), nullable=False),
        sa.Column("media_id", sa.Text(), nullable=False),
        sa.Column("quarantined_by", sa.Text(), nullable=True),
        sa.Column("quarantined_ts", _BIGINT, nullable=True),
        sa.Column("safe_from_quarantine", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("media_origin", "media_id", name=op.f("pk_media_moderation")),
    )
    op.create_table(
        "user_redactions",
        sa.Column("redact_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("failed", sa.JSON(), nullable=False),
        sa.Column("created_ts", _BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("redact_id", name=op.f("pk_user_redactions")),
    )
    op.create_table(
        "blocked_rooms",
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("blocked_ts", _BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("room_id", name=op.f("pk_blocked_rooms")),
    )


def downgrade() -> None:
    op.drop_table("blocked_rooms")
    op.drop_table("user_redactions")
    op.drop_table("media_moderation")
    op.drop_table("server_notice_rooms")
    op.drop_index(op.f("ix_room_delete_tasks_room_id"), table_name="room_delete_tasks")
    op.drop_table("room_delete_tasks")
    op.drop_table("user_ips")
    op.drop_table("ratelimit_overrides")
    op.drop_table("user_moderation")
