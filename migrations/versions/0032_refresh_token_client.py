"""refresh tokens bound to the OAuth client that obtained them

Revision ID: 0032
Revises: 0028
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The OAuth client a session's refresh token was issued to (issue 23); null for the
    # sessions of /login and /register, which refresh through /refresh.
    op.add_column("refresh_tokens", sa.Column("oauth_client_id", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.drop_column("oauth_client_id")
