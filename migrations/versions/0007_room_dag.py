"""rooms as a graph: forward extremities, prev_events and auth_events edges, rejections,
outliers and soft-failed events

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_POSITIONS = sa.table(
    "stream_positions", sa.column("stream", sa.Text), sa.column("position", sa.BigInteger)
)
_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# An element of prev_events or auth_events is an event ID, or in room versions 1 and 2 an
# [event ID, hashes] pair. Each dialect reads the PDU's JSON text itself, so that no event
# is loaded into Python.
_EDGES = {
    "postgresql": """
        INSERT INTO {table} (event_id, {column})
        SELECT DISTINCT e.event_id,
               CASE jsonb_typeof(p.value) WHEN 'array' THEN p.value ->> 0
                                          ELSE p.value #>> '{{}}' END
        FROM events AS e,
             jsonb_array_elements(
                 CASE jsonb_typeof(e.json::jsonb -> '{key}') WHEN 'array'
                      THEN e.json::jsonb -> '{key}' ELSE '[]'::jsonb END
             ) AS p(value)
    """,
    "sqlite": """
        INSERT INTO {table} (event_id, {column})
        SELECT DISTINCT e.event_id,
               CASE p.type WHEN 'array' THEN json_extract(p.value, '$[0]') ELSE p.value END
        FROM events AS e, json_each(e.json, '$.{key}') AS p
        WHERE json_type(e.json, '$.{key}') = 'array'
    """,
}


def upgrade() -> None:
    op.create_table(
        "event_forward_extremities",
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "event_id", name=op.f("pk_event_forward_extremities")),
    )
    op.create_table(
        "event_edges",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("prev_event_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "prev_event_id", name=op.f("pk_event_edges")),
    )
    op.create_index(
        op.f("ix_event_edges_prev_event_id"), "event_edges", ["prev_event_id"], unique=False
    )
    op.create_table(
        "event_auth",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("auth_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "auth_id", name=op.f("pk_event_auth")),
    )
    op.create_table(
        "rejections",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rejected_ts", _BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_rejections")),
    )
    with op.batch_alter_table("events") as batch_op:
        batch_op.add_column(
            sa.Column("outlier", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("soft_failed", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # Events that are never served (outliers, rejected, soft-failed) are numbered downwards
    # from here, below every position of the events stream, so that no read of the stream
    # meets them.
    op.bulk_insert(_POSITIONS, [{"stream": "unserved_events", "position": 0}])

    # Until now a room was a line: its latest event was its one forward extremity.
    op.execute(
        "INSERT INTO event_forward_extremities (room_id, event_id) "
        "SELECT room_id, latest_event_id FROM rooms WHERE latest_event_id IS NOT NULL"
    )
    edges = _EDGES[op.get_bind().dialect.name]
    op.execute(edges.format(table="event_edges", column="prev_event_id", key="prev_events"))
    op.execute(edges.format(table="event_auth", column="auth_id", key="auth_events"))


def downgrade() -> None:
    op.execute(_POSITIONS.delete().where(_POSITIONS.c.stream == "unserved_events"))
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("soft_failed")
        batch_op.drop_column("outlier")
    op.drop_table("rejections")
    op.drop_table("event_auth")
    op.drop_index(op.f("ix_event_edges_prev_event_id"), table_name="event_edges")
    op.drop_table("event_edges")
    op.drop_table("event_forward_extremities")
