"""the auth graph's chain cover index, filled for the rooms stored before it

Revision ID: 0033
Revises: 0031
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from homeserver.storage.events.chains import ChainBuilder

revision = "0033"
down_revision = "0031"
branch_labels = None
depends_on = None

_EVENTS = sa.table(
    "events",
    sa.column("event_id", sa.Text),
    sa.column("room_id", sa.Text),
    sa.column("type", sa.Text),
    sa.column("state_key", sa.Text),
)
_AUTH = sa.table("event_auth", sa.column("event_id", sa.Text), sa.column("auth_id", sa.Text))
# The rows are written in batches of this many (PostgreSQL's limit of bound parameters).
_BATCH = 5000


def upgrade() -> None:
    chains = op.create_table(
        "event_auth_chains",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("chain_id", sa.Text(), nullable=False),
        sa.Column("sequence_number", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_event_auth_chains")),
        sa.UniqueConstraint(
            "chain_id",
            "sequence_number",
            name=op.f("uq_event_auth_chains_chain_id_sequence_number"),
        ),
    )
    links = op.create_table(
        "event_auth_chain_links",
        sa.Column("origin_chain_id", sa.Text(), nullable=False),
        sa.Column("target_chain_id", sa.Text(), nullable=False),
        sa.Column("origin_sequence_number", sa.Integer(), nullable=False),
        sa.Column("target_sequence_number", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "origin_chain_id",
            "target_chain_id",
            "origin_sequence_number",
            "target_sequence_number",
            name=op.f("pk_event_auth_chain_links"),
        ),
    )
    waiting = op.create_table(
        "event_auth_chain_to_calculate",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("state_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_event_auth_chain_to_calculate")),
    )
    op.create_index(
        op.f("ix_event_auth_chain_to_calculate_room_id"),
        "event_auth_chain_to_calculate",
        ["room_id"],
    )
    # The state events stored so far, room by room, indexed here: the rooms of a homeserver
    # of this project's size take seconds; the events arriving after are indexed as stored.
    bind = op.get_bind()
    rooms = [r[0] for r in bind.execute(sa.select(_EVENTS.c.room_id).distinct())]
    for room_id in rooms:
        builder = ChainBuilder()
        found = bind.execute(
            sa.select(_EVENTS.c.event_id, _EVENTS.c.type, _EVENTS.c.state_key).where(
                _EVENTS.c.room_id == room_id, _EVENTS.c.state_key.is_not(None)
            )
        ).all()
        auths: dict[str, list[str]] = {}
        edges = bind.execute(
            sa.select(_AUTH.c.event_id, _AUTH.c.auth_id)
            .join(_EVENTS, _EVENTS.c.event_id == _AUTH.c.event_id)
            .where(_EVENTS.c.room_id == room_id, _EVENTS.c.state_key.is_not(None))
        )
        for edge in edges:
            auths.setdefault(edge.event_id, []).append(edge.auth_id)
        kinds = {r.event_id: (r.type, r.state_key) for r in found}
        for event_id, (event_type, state_key) in kinds.items():
            builder.add(event_id, event_type, state_key, auths.get(event_id, []))
        places, link_rows, left = builder.rows()
        for table, rows in (
            (chains, places),
            (links, link_rows),
            (
                waiting,
                [
                    {
                        "event_id": e,
                        "room_id": room_id,
                        "type": kinds[e][0],
                        "state_key": kinds[e][1],
                    }
                    for e in left
                ],
            ),
        ):
            for i in range(0, len(rows), _BATCH):
                op.bulk_insert(table, rows[i : i + _BATCH])


def downgrade() -> None:
    op.drop_table("event_auth_chain_to_calculate")
    op.drop_table("event_auth_chain_links")
    op.drop_table("event_auth_chains")
