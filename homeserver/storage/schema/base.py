"""The metadata every table is on, the integer type, and the stream positions."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

stream_positions = sa.Table(
    "stream_positions",
    metadata,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("position", BigInt, nullable=False),
)
# PostgreSQL, several writers (``storage/database/positions.py``): each database handle's
# own position per stream, below which everything it allocated is finished; ``idle``: it
# has nothing in flight (the position is the highest it allocated). Readers take the lowest
# busy one among the writers whose ``heartbeat_ms`` is recent.
stream_writers = sa.Table(
    "stream_writers",
    metadata,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("writer", sa.Text, primary_key=True),
    sa.Column("position", BigInt, nullable=False),
    sa.Column("idle", sa.Boolean, nullable=False),
    sa.Column("heartbeat_ms", BigInt, nullable=False),
)
# Not a stream: the row that numbers events never served (outliers, rejected, soft-failed)
# downwards from 0, below every position of the events stream, so that no read of the
# stream meets them.
UNSERVED_EVENTS = "unserved_events"
# Not a stream either: the row that numbers events backfilled from other servers (history
# from before we joined or from a gap). They are served (``/messages`` pages through them)
# but are no news: numbered downwards from BACKFILL_BASE, far below the unserved events,
# so no read of the events stream (``/sync``) meets them, while a room's timeline, read in
# topological order, takes them (``SERVED`` below).
BACKFILLED_EVENTS = "backfilled_events"
BACKFILL_BASE = -(2**62)
