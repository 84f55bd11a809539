"""OAuth 2.0 API: clients and authorization codes

Revision ID: 0021
Revises: 0022
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0022"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Dynamically registered OAuth clients (issue 23).
    op.create_table(
        "oauth_clients",
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("created_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_oauth_clients")),
    )
    # Authorization codes by their hash: short-lived and used once.
    op.create_table(
        "oauth_codes",
        sa.Column("code_hash", sa.LargeBinary(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("device_id", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.Text(), nullable=False),
        sa.Column("expires_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_oauth_codes")),
    )
    op.create_index(op.f("ix_oauth_codes_expires_ts"), "oauth_codes", ["expires_ts"])
    # Device authorization grants (RFC 8628).
    op.create_table(
        "oauth_device_grants",
        sa.Column("device_code_hash", sa.LargeBinary(), nullable=False),
        sa.Column("user_code", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("device_id", sa.Text(), nullable=False),
        sa.Column("expires_ts", BigInt, nullable=False),
        sa.Column("interval_ms", BigInt, nullable=False),
        sa.Column("last_poll_ts", BigInt, nullable=True),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("denied", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("device_code_hash", name=op.f("pk_oauth_device_grants")),
        sa.UniqueConstraint("user_code", name=op.f("uq_oauth_device_grants_user_code")),
    )
    op.create_index(
        op.f("ix_oauth_device_grants_expires_ts"), "oauth_device_grants", ["expires_ts"]
    )
    # Single sign-on through upstream OpenID Connect providers.
    op.create_table(
        "sso_sessions",
        sa.Column("session_hash", sa.LargeBinary(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("nonce", sa.Text(), nullable=False),
        sa.Column("code_verifier", sa.Text(), nullable=False),
        sa.Column("redirect_url", sa.Text(), nullable=False),
        sa.Column("claims", sa.Text(), nullable=True),
        sa.Column("expires_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("session_hash", name=op.f("pk_sso_sessions")),
    )
    op.create_index(op.f("ix_sso_sessions_expires_ts"), "sso_sessions", ["expires_ts"])
    op.create_table(
        "sso_links",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "subject", name=op.f("pk_sso_links")),
    )
    op.create_index(op.f("ix_sso_links_user_id"), "sso_links", ["user_id"])
    # Browser sessions of the account management pages.
    op.create_table(
        "oauth_browser_sessions",
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("expires_ts", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_oauth_browser_sessions")),
    )
    op.create_index(
        op.f("ix_oauth_browser_sessions_expires_ts"), "oauth_browser_sessions", ["expires_ts"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_oauth_browser_sessions_expires_ts"), table_name="oauth_browser_sessions")
    op.drop_table("oauth_browser_sessions")
    op.drop_index(op.f("ix_sso_links_user_id"), table_name="sso_links")
    op.drop_table("sso_links")
    op.drop_index(op.f("ix_sso_sessions_expires_ts"), table_name="sso_sessions")
    op.drop_table("sso_sessions")
    op.drop_index(op.f("ix_oauth_device_grants_expires_ts"), table_name="oauth_device_grants")
    op.drop_table("oauth_device_grants")
    op.drop_index(op.f("ix_oauth_codes_expires_ts"), table_name="oauth_codes")
    op.drop_table("oauth_codes")
    op.drop_table("oauth_clients")
