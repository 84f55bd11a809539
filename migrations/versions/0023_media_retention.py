"""media retention: the last access of local media, leases of singleton jobs

Revision ID: 0023
Revises: 0024
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0024"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # NULL: not downloaded since the revision; retention then goes by creation.
    with op.batch_alter_table("media") as batch:
        batch.add_column(sa.Column("last_access_ts", BigInt, nullable=True))
    op.create_table(
        "job_leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("until_ts", BigInt, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
    with op.batch_alter_table("media") as batch:
        batch.drop_column("last_access_ts")
