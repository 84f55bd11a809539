"""remote media cache

Revision ID: 0024
Revises: 0021
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0021"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "remote_media",
        sa.Column("server_name", sa.Text(), nullable=False),
        sa.Column("media_id", sa.Text(), nullable=False),
        sa.Column("fetched_ts", BigInt, nullable=False),
        sa.Column("last_access_ts", BigInt, nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("upload_name", sa.Text(), nullable=True),
        sa.Column("size", BigInt, nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("animated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("server_name", "media_id", name=op.f("pk_remote_media")),
    )
    op.create_index(
        op.f("ix_remote_media_last_access_ts"), "remote_media", ["last_access_ts"], unique=False
    )
    op.create_index(op.f("ix_remote_media_sha256"), "remote_media", ["sha256"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_remote_media_sha256"), table_name="remote_media")
    op.drop_index(op.f("ix_remote_media_last_access_ts"), table_name="remote_media")
    op.drop_table("remote_media")
