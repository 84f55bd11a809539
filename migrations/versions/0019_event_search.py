"""event search

Revision ID: 0019
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0013"
branch_labels = None
depends_on = None

# The searchable text of an event (spec, POST /search: content.body, content.name and
# content.topic), by its type. homeserver/storage/search.py queries the same expression:
# PostgreSQL uses an expression index only for a query that repeats it exactly.
_PG_TEXT = (
    "CASE type"
    " WHEN 'm.room.message' THEN (json::jsonb -> 'content' ->> 'body')"
    " WHEN 'm.room.name' THEN (json::jsonb -> 'content' ->> 'name')"
    " WHEN 'm.room.topic' THEN (json::jsonb -> 'content' ->> 'topic')"
    " END"
)
_PG_VECTOR = f"to_tsvector('english'::regconfig, {_PG_TEXT})"

_SQLITE_TEXT = (
    "CASE new.type"
    " WHEN 'm.room.message' THEN json_extract(new.json, '$.content.body')"
    " WHEN 'm.room.name' THEN json_extract(new.json, '$.content.name')"
    " WHEN 'm.room.topic' THEN json_extract(new.json, '$.content.topic')"
    " END"
)
_TYPES = "('m.room.message', 'm.room.name', 'm.room.topic')"


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        # An expression index: PostgreSQL keeps it as rows are inserted, so the send path
        # (one statement for a message) writes nothing more. Other types give NULL, which
        # the index holds as one empty entry. Building it indexes the existing events.
        # fastupdate off: each insert pays its own share, where a pending list would make
        # the send that fills it merge the whole list (a spike in send latency).
        op.execute(
            f"CREATE INDEX ix_events_search ON events USING gin (({_PG_VECTOR}))"
            " WITH (fastupdate = off)"
        )
        return
    # SQLite: an FTS5 table whose rowid is the event's stream_ordering, kept by triggers in
    # the transaction that writes the event (no statement more on the send path). Unserved
    # events (outliers, soft-failed: stream_ordering <= 0) and redacted ones are left out.
    op.execute(
        "CREATE VIRTUAL TABLE event_search USING fts5("
        "value, tokenize = 'porter unicode61 remove_diacritics 2')"
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
    op.execute(
        "CREATE TRIGGER event_search_redact AFTER UPDATE OF redacted_by ON events"
        f" WHEN new.type IN {_TYPES} AND new.redacted_by IS NOT NULL"
        " BEGIN DELETE FROM event_search WHERE rowid = old.stream_ordering; END"
    )
    op.execute(
        "CREATE TRIGGER event_search_delete AFTER DELETE ON events"
        f" WHEN old.type IN {_TYPES}"
        " BEGIN DELETE FROM event_search WHERE rowid = old.stream_ordering; END"
    )
    op.execute(
        "INSERT INTO event_search (rowid, value)"
        f" SELECT stream_ordering, v FROM (SELECT stream_ordering, {_SQLITE_TEXT} AS v"
        f" FROM events AS new WHERE type IN {_TYPES} AND stream_ordering > 0"
        " AND redacted_by IS NULL) WHERE typeof(v) = 'text'"
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_events_search")
        return
    for trigger in ("event_search_insert", "event_search_redact", "event_search_delete"):
        op.execute(f"DROP TRIGGER {trigger}")
    op.execute("DROP TABLE event_search")
