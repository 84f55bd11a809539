"""openid and login tokens, guest accounts, events by timestamp

Revision ID: 0020
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0012"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "openid_tokens",
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("valid_until_ms", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_openid_tokens")),
    )
    op.create_index(
        op.f("ix_openid_tokens_valid_until_ms"), "openid_tokens", ["valid_until_ms"], unique=False
    )
    op.create_table(
        "login_tokens",
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("valid_until_ms", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_login_tokens")),
    )
    op.create_index(
        op.f("ix_login_tokens_valid_until_ms"), "login_tokens", ["valid_until_ms"], unique=False
    )
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("is_guest", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        op.f("ix_events_room_id_origin_server_ts"),
        "events",
        ["room_id", "origin_server_ts"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_events_room_id_origin_server_ts"), table_name="events")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("is_guest")
    op.drop_index(op.f("ix_login_tokens_valid_until_ms"), table_name="login_tokens")
    op.drop_table("login_tokens")
    op.drop_index(op.f("ix_openid_tokens_valid_until_ms"), table_name="openid_tokens")
    op.drop_table("openid_tokens")
