"""Stream positions from several writers (PostgreSQL): three database handles, as three
workers, take positions concurrently and commit them out of order (some roll back); readers
on every handle advance from token to token and must read every committed position exactly
once: no token passes a position that commits later."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.storage.database import Database
from homeserver.storage.database import positions as positions_module

pytestmark = pytest.mark.asyncio

STREAM = Stream.TO_DEVICE
WRITERS_PER_HANDLE = 6
WRITES_PER_WRITER = 25


@pytest.fixture
async def handles(pg_database: str) -> AsyncIterator[list[Database]]:
    from tests.conftest import truncate

    await truncate(pg_database)
    dbs = [Database(pg_database, pool_size=3, writer=f"w{i}") for i in range(3)]
    for db in dbs:
        await db.start_positions()
    table = f"scratch_{random.getrandbits(32):x}"
    async with dbs[0].write() as conn:
        await conn.execute(sa.text(f"CREATE TABLE {table} (position BIGINT PRIMARY KEY)"))
    dbs[0].scratch = table  # type: ignore[attr-defined]
    try:
        yield dbs
    finally:
        async with dbs[0].write() as conn:
            await conn.execute(sa.text(f"DROP TABLE {table}"))
        for db in dbs:
            await db.close()


async def _write(db: Database, table: str, rng: random.Random, committed: set[int]) -> None:
    for _ in range(WRITES_PER_WRITER):
        rollback = rng.random() < 0.1
        try:
            async with db.write() as conn:
                position = await db.next_position(conn, STREAM)
                await conn.execute(sa.text(f"INSERT INTO {table} VALUES ({position})"))
                # Held open a while: others commit higher positions meanwhile.
                await asyncio.sleep(rng.random() * 0.02)
                if rollback:
                    raise _RolledBack
            committed.add(position)
        except _RolledBack:
            pass
        await asyncio.sleep(rng.random() * 0.005)


class _RolledBack(Exception):
    pass


async def _read(
    dbs: list[Database],
    table: str,
    rng: random.Random,
    done: asyncio.Event,
    seen: list[int],
    tokens: list[int],
) -> None:
    token = 0
    final = False
    while True:
        db = rng.choice(dbs)
        now = (await db.current_positions())[STREAM]
        assert now >= token, "a token went back"
        async with db.read() as conn:
            rows = await conn.execute(
                sa.text(
                    f"SELECT position FROM {table} WHERE position > {token} "
                    f"AND position <= {now} ORDER BY position"
                )
            )
            seen.extend(int(r.position) for r in rows)
        token = now
        tokens.append(token)
        if final:
            return
        if done.is_set():
            final = True  # one more read after every writer finished
            for handle in dbs:
                await handle.positions.flush()  # type: ignore[union-attr]
        await asyncio.sleep(rng.random() * 0.003)


async def test_no_token_skips_a_position_committed_late(handles: list[Database]) -> None:
    table: str = handles[0].scratch  # type: ignore[attr-defined]
    rng = random.Random(21)
    committed: set[int] = set()
    done = asyncio.Event()
    seen: list[list[int]] = [[] for _ in range(4)]
    tokens: list[list[int]] = [[] for _ in range(4)]
    readers = [
        asyncio.create_task(_read(handles, table, random.Random(i), done, seen[i], tokens[i]))
        for i in range(4)
    ]
    writers = [
        _write(db, table, random.Random(rng.random()), committed)
        for db in handles
        for _ in range(WRITERS_PER_HANDLE)
    ]
    await asyncio.gather(*writers)
    done.set()
    await asyncio.gather(*readers)
    assert len(committed) > 3 * WRITERS_PER_HANDLE * WRITES_PER_WRITER * 0.8
    for read, moved in zip(seen, tokens, strict=True):
        # Every committed position exactly once, in order: none was passed while in flight.
        assert read == sorted(committed)
        assert len(set(moved)) > 10  # the readers' tokens really moved along the way


async def test_a_busy_writer_holds_readers_back_until_its_heartbeat_is_stale(
    handles: list[Database],
) -> None:
    db = handles[0]
    table: str = db.scratch  # type: ignore[attr-defined]
    async with db.write() as conn:
        position = await db.next_position(conn, STREAM)
        await conn.execute(sa.text(f"INSERT INTO {table} VALUES ({position})"))
    assert (await db.current_positions())[STREAM] == position
    now_ms = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    # Another worker, busy below this position, its heartbeat fresh: readers wait for it.
    async with db.write() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO stream_writers VALUES "
                f"('{STREAM.value}', 'other', {position - 1}, false, {now_ms})"
            )
        )
    other = Database(db.url)
    try:
        assert (await other.current_positions())[STREAM] == position - 1
    finally:
        await other.close()
    # The same worker gone (killed: its transactions aborted, its heartbeat stopped): once
    # its heartbeat is older than STALE_MS it holds no one back.
    async with db.write() as conn:
        await conn.execute(
            sa.text(
                f"UPDATE stream_writers SET heartbeat_ms = {now_ms} - "
                f"{positions_module.STALE_MS + 1} WHERE writer = 'other'"
            )
        )
    fresh = Database(db.url)
    try:
        assert (await fresh.current_positions())[STREAM] == position
    finally:
        await fresh.close()


async def test_a_writer_whose_heartbeat_is_late_commits_nothing(handles: list[Database]) -> None:
    db = handles[0]
    table: str = db.scratch  # type: ignore[attr-defined]
    assert db.positions is not None
    with pytest.raises(positions_module.WriterStale):
        async with db.write() as conn:
            position = await db.next_position(conn, STREAM)
            await conn.execute(sa.text(f"INSERT INTO {table} VALUES ({position})"))
            # As if its event loop had stalled past the guard: readers may have left it out.
            db.positions._heartbeat_sent -= positions_module.GUARD_S + 1
    async with db.read() as conn:
        rows = (await conn.execute(sa.text(f"SELECT position FROM {table}"))).all()
    assert rows == []
    # The next heartbeat lets it write again, at a new position.
    await db.positions.beat()
    async with db.write() as conn:
        again = await db.next_position(conn, STREAM)
    assert again > position
