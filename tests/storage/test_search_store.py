"""The search index: migration 0019 indexes the events stored before it, later writes keep
it (SQLite's triggers, PostgreSQL's expression index), and PostgreSQL's query uses it."""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from homeserver.storage.database import Database
from homeserver.storage.migrate import alembic_config, upgrade_head
from homeserver.storage.schema import events
from homeserver.storage.search import (
    PG_VECTOR,
    SearchCriteria,
    SearchPosition,
    SearchStore,
    search_words,
)
from tests.storage.test_room_dag_migration import fresh_url, upgrade_to

__all__ = ["fresh_url"]  # the fixture, shared with the room graph's migration test

ROOM = "!room:test"
TYPES = ("m.room.message", "m.room.name", "m.room.topic")


def before_search(url: str) -> str:
    """The revision migration 0019 follows (whatever number it gets at a merge)."""
    script = ScriptDirectory.from_config(alembic_config(url))
    [search] = [r for r in script.walk_revisions() if r.path.endswith("_event_search.py")]
    assert isinstance(search.down_revision, str)
    return search.down_revision


async def insert(
    db: Database, position: int, event_type: str, content: object, **extra: object
) -> None:
    pdu = {"room_id": ROOM, "type": event_type, "sender": "@a:test", "content": content}
    row = {
        "stream_ordering": position,
        "event_id": f"$e{position}",
        "room_id": ROOM,
        "type": event_type,
        "state_key": None if event_type == "m.room.message" else "",
        "sender": "@a:test",
        "depth": abs(position),
        "origin_server_ts": 1_700_000_000_000 + position,
        "json": json.dumps(pdu),
        "state_group": 1,
        **extra,
    }
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(events).values(row))


def criteria(term: str) -> SearchCriteria:
    return SearchCriteria(search_words(term), [ROOM], TYPES)


async def found(store: SearchStore, term: str) -> list[str]:
    return [h.event_id for h in await store.search(criteria(term), "recent", None, 50)]


async def test_migration_indexes_old_events_and_writes_keep_it(fresh_url: str) -> None:
    db = Database(fresh_url)
    try:
        await upgrade_to(db, before_search(fresh_url))
        await insert(db, 1, "m.room.message", {"body": "old penguin news"})
        await insert(db, 2, "m.room.name", {"name": "Penguin room"})
        await insert(db, 3, "m.room.topic", {"topic": "penguins only"})
        await insert(db, 4, "m.room.message", {"body": "redacted penguin"}, redacted_by="$r")
        await insert(db, -1, "m.room.message", {"body": "outlier penguin"}, outlier=True)
        await insert(db, 5, "m.room.message", {"body": 42})  # not text: not indexed
        await insert(db, 6, "m.room.member", {"membership": "join", "displayname": "penguin"})
        await upgrade_head(db.engine)
        store = SearchStore(db)
        assert await found(store, "penguin") == ["$e3", "$e2", "$e1"]
        assert await store.count(criteria("penguin")) == 3
        # Written after the migration: indexed as it is written, dropped when redacted.
        await insert(db, 7, "m.room.message", {"body": "new penguin news"})
        assert await found(store, "penguin news") == ["$e7", "$e1"]
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.update(events).where(events.c.event_id == "$e7").values(redacted_by="$r2")
            )
            await conn.execute(sa.delete(events).where(events.c.event_id == "$e1"))
        assert await found(store, "penguin") == ["$e3", "$e2"]
        # Keyset pages: after the first hit, the rest.
        [first] = await store.search(criteria("penguin"), "rank", None, 1)
        rest = await store.search(
            criteria("penguin"), "rank", SearchPosition(first.stream_ordering, first.rank), 5
        )
        assert [first.event_id, *(h.event_id for h in rest)] in (["$e3", "$e2"], ["$e2", "$e3"])
        if not db.is_sqlite:
            # The query repeats the index's expression exactly, so the planner can use it.
            async with db.engine.begin() as conn:
                await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
                sql = (
                    f"EXPLAIN SELECT event_id FROM events WHERE {PG_VECTOR.name}"
                    " @@ to_tsquery('english', 'penguin:*')"
                )
                plan = (await conn.execute(sa.text(sql))).all()
            assert "ix_events_search" in " ".join(str(r[0]) for r in plan)
            async with db.engine.connect() as conn:
                options = await conn.scalar(
                    sa.text("SELECT reloptions FROM pg_class WHERE relname = 'ix_events_search'")
                )
            assert options == ["fastupdate=off"]
    finally:
        await db.close()


async def indexed_rows(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int(await conn.scalar(sa.text("SELECT count(*) FROM event_search")) or 0)


async def test_sqlite_indexes_new_events_in_batches(fresh_url: str) -> None:
    """Migration 0027: no trigger writes the index as an event is stored; index_pending adds
    what was stored since it last ran, in one go, and a search runs it first."""
    db = Database(fresh_url)
    try:
        await upgrade_head(db.engine)
        store = SearchStore(db)
        await insert(db, 1, "m.room.message", {"body": "first walrus"})
        await insert(db, 2, "m.room.message", {"body": "second walrus"})
        await insert(db, 3, "m.room.message", {"body": "gone walrus"}, redacted_by="$r")
        await insert(db, 4, "m.room.member", {"membership": "join", "displayname": "walrus"})
        if not db.is_sqlite:
            assert await store.index_pending() == 0  # PostgreSQL's index is kept per row
            assert await found(store, "walrus") == ["$e2", "$e1"]
            return
        assert await indexed_rows(db) == 0  # stored, not indexed yet
        assert await store.index_pending() == 2
        assert await indexed_rows(db) == 2
        assert await store.index_pending() == 0  # nothing new: nothing written
        # Stored after: a search indexes it first, so it is found at once.
        await insert(db, 5, "m.room.topic", {"topic": "walrus talk"})
        assert await found(store, "walrus") == ["$e5", "$e2", "$e1"]
        assert await store.count(criteria("walrus")) == 3
        # Redacted once indexed: the trigger takes it out.
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.update(events).where(events.c.event_id == "$e2").values(redacted_by="$r2")
            )
        assert await found(store, "walrus") == ["$e5", "$e1"]
        # Redacted before it was indexed: never indexed.
        await insert(db, 6, "m.room.message", {"body": "secret walrus"})
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.update(events).where(events.c.event_id == "$e6").values(redacted_by="$r3")
            )
        assert await found(store, "walrus") == ["$e5", "$e1"]
        # A restart (a new store) goes on from what the index holds.
        await insert(db, 7, "m.room.message", {"body": "late walrus"})
        again = SearchStore(db)
        assert await again.index_pending() == 1
        assert await found(again, "walrus") == ["$e7", "$e5", "$e1"]
        assert await indexed_rows(db) == 3
    finally:
        await db.close()
