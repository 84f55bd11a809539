"""Pooled connections are never held across a wait for anything but the database, and a
request that finds none free in time gets PoolExhausted (a 503 to the client), on both
databases (SQLite has no pool: nothing is held, nothing is exhausted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from homeserver.core import pool_guard
from homeserver.core.pool_guard import HeldAcrossWait, PoolExhausted
from homeserver.storage.database import Database
from homeserver.storage.shared_reads import SharedReads
from homeserver.wakeups.bus import InMemoryBus
from homeserver.wakeups.notifier import Notifier


@pytest.fixture
async def small_db(db_url: str) -> AsyncIterator[Database]:
    """Two read connections and one write connection on PostgreSQL, given up on quickly."""
    database = Database(db_url, pool_size=1, pool_timeout_s=0.5)
    try:
        yield database
    finally:
        await database.close()


async def _read(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.text("SELECT 1"))).scalar_one())


async def test_waiting_for_a_wakeup_while_holding_a_connection_fails(small_db: Database) -> None:
    listener = Notifier(InMemoryBus()).listen("@a:test", ["!r:test"])
    async with small_db.read() as conn:
        await conn.execute(sa.text("SELECT 1"))
        if small_db.is_sqlite:
            assert not await listener.wait(0.01)  # SQLite's reader is no pooled connection
        else:
            assert pool_guard.held_here() == 1
            with pytest.raises(HeldAcrossWait, match="a wake-up"):
                await listener.wait(0.01)
    assert pool_guard.held_here() == 0
    assert not await listener.wait(0.01)


async def test_a_pinned_read_ends_before_a_wait_is_allowed(small_db: Database) -> None:
    listener = Notifier(InMemoryBus()).listen("@a:test", ["!r:test"])
    async with small_db.pinned_reads():
        await _read(small_db)
        if not small_db.is_sqlite:
            with pytest.raises(HeldAcrossWait):
                await listener.wait(0.01)
    assert not await listener.wait(0.01)


async def test_a_write_while_holding_a_read_gives_the_pinned_one_back(small_db: Database) -> None:
    async with small_db.pinned_reads():
        await _read(small_db)
        async with small_db.write() as conn:  # no HeldAcrossWait: the pin went back first
            await conn.execute(sa.text("SELECT 1"))
            assert pool_guard.held_here() == (0 if small_db.is_sqlite else 1)
        await _read(small_db)  # takes one again
    assert pool_guard.held_here() == 0


async def test_pinned_reads_waiting_for_a_shared_read_give_their_connections_back(
    small_db: Database,
) -> None:
    """Every read connection pinned by a task that waits for a read another task has to
    make: before, that read waited for a connection that never came (the pool's timeout,
    then a 500); now the waiters give theirs back."""
    shared: SharedReads[str, int] = SharedReads(10)
    reader_started = asyncio.Event()
    go = asyncio.Event()

    async def the_read() -> int:
        reader_started.set()
        await go.wait()
        return await _read(small_db)  # needs a connection

    async def waiter() -> int:
        async with small_db.pinned_reads():
            await _read(small_db)  # holds one of the two
            await reader_started.wait()
            return await shared.get("key", the_read)

    reader = asyncio.create_task(shared.get("key", the_read))
    await reader_started.wait()
    waiters = [asyncio.create_task(waiter()) for _ in range(2)]
    await asyncio.sleep(0.1)
    go.set()
    assert await asyncio.wait_for(reader, 5) == 1
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [1, 1]


async def test_no_connection_in_time_is_pool_exhausted(small_db: Database) -> None:
    if small_db.is_sqlite:
        # No pool: a read never waits for a connection.
        assert await asyncio.gather(*(_read(small_db) for _ in range(10))) == [1] * 10
        return
    release = asyncio.Event()

    async def hold() -> None:
        async with small_db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0.1)
    before = pool_guard.pressure_counts().get("exhausted", 0)
    with pytest.raises(PoolExhausted) as raised:
        await _read(small_db)
    assert raised.value.retry_after_s >= 1
    assert pool_guard.pressure_counts()["exhausted"] == before + 1
    release.set()
    await asyncio.gather(*holders)
    assert await _read(small_db) == 1  # the pool is whole again

    # The write pool too.
    async def write_and_hold() -> None:
        async with small_db.write() as conn:
            await conn.execute(sa.text("SELECT 1"))
            await release2.wait()

    release2 = asyncio.Event()
    writer = asyncio.create_task(write_and_hold())
    await asyncio.sleep(0.1)
    with pytest.raises(PoolExhausted):
        async with small_db.write() as conn:
            await conn.execute(sa.text("SELECT 1"))
    release2.set()
    await writer
