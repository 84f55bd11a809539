"""event search indexed in batches on SQLite

Revision ID: 0027
Revises: 0025
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0027"
down_revision = "0025"
branch_labels = None
depends_on = None

# Migration 0019's insert trigger, for the downgrade: the same text, the same conditions.
_SQLITE_TEXT = (
    "CASE new.type"
    " WHEN 'm.room.message' THEN json_extract(new.json, '$.content.body')"
    " WHEN 'm.room.name' THEN json_extract(new.json, '$.content.name')"
    " WHEN 'm.room.topic' THEN json_extract(new.json, '$.content.topic')"
    " END"
)
_TYPES = "('m.room.message', 'm.room.name', 'm.room.topic')"


def upgrade() -> None:
    # SQLite: the FTS5 table is no longer written by a trigger in each event's transaction
    # (a segment per send, and FTS5's merges of them, cost more than the rest of the
    # event's row); homeserver/storage/search.py indexes the new events in batches, and
    # before each search. Everything stored so far is indexed already. PostgreSQL's
    # expression index is unchanged.
    if op.get_context().dialect.name == "sqlite":
        op.execute("DROP TRIGGER event_search_insert")


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    op.execute(
        "INSERT INTO event_search (rowid, value)"
        f" SELECT stream_ordering, v FROM (SELECT stream_ordering, {_SQLITE_TEXT} AS v"
        f" FROM events AS new WHERE type IN {_TYPES} AND redacted_by IS NULL"
        " AND stream_ordering > (SELECT coalesce(max(rowid), 0) FROM event_search))"
        " WHERE typeof(v) = 'text'"
    )
    op.execute(
        "CREATE TRIGGER event_search_insert AFTER INSERT ON events"
        f" WHEN new.type IN {_TYPES} AND new.stream_ordering > 0 AND new.redacted_by IS NULL"
        " BEGIN"
        " INSERT INTO event_search (rowid, value)"
        f" SELECT new.stream_ordering, v FROM (SELECT {_SQLITE_TEXT} AS v)"
        " WHERE typeof(v) = 'text';"
        " END"
    )
