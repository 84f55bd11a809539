"""The SQLite handle: statements on the event loop, BEGIN and COMMIT on the writer's thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from homeserver.storage.database import Database

# A foreign key checked only at COMMIT: the way to make a real COMMIT fail.
SCHEMA = ("CREATE TABLE parent (id INTEGER PRIMARY KEY)",
          "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
          "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with database.write() as conn:
        for statement in SCHEMA:
            await conn.execute(sa.text(statement))
    yield database
    await database.close()


async def _ids(db: Database, table: str) -> list[int]:
    async with db.read() as conn:
        return list((await conn.execute(sa.text(f"SELECT id FROM {table} ORDER BY id")))
                    .scalars())


async def test_a_failed_commit_leaves_nothing_and_the_writer_usable(db: Database) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO child VALUES (1, 99)"))
    assert await _ids(db, "child") == []
    async with db.write() as conn:
        await conn.execute(sa.text("INSERT INTO parent VALUES (99)"))
        await conn.execute(sa.text("INSERT INTO child VALUES (1, 99)"))
    assert await _ids(db, "child") == [1]


async def test_a_failed_body_rolls_back(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO parent VALUES (1)"))
            raise RuntimeError("the caller changed its mind")
    assert await _ids(db, "parent") == []


async def test_reads_see_commits_only_and_writers_take_turns(db: Database) -> None:
    inside = 0

    async def write(n: int) -> None:
        nonlocal inside
        async with db.write() as conn:
            inside += 1
            assert inside == 1  # one write transaction at a time
            await conn.execute(sa.text("INSERT INTO parent VALUES (:n)"), {"n": n})
            await asyncio.sleep(0)  # others run here: their reads must not see row n yet
            assert n not in await _ids(db, "parent")
            inside -= 1
        assert n in await _ids(db, "parent")

    await asyncio.gather(*(write(n) for n in range(1, 21)))
    assert await _ids(db, "parent") == list(range(1, 21))


async def test_a_cancelled_writer_waits_for_its_commit(db: Database) -> None:
    async def write() -> None:
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO parent VALUES (7)"))

    task = asyncio.create_task(write())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Whether it got to commit or not, the writer is free and consistent.
    async with db.write() as conn:
        await conn.execute(sa.text("INSERT INTO parent VALUES (8)"))
    assert set(await _ids(db, "parent")) <= {7, 8}
    assert 8 in await _ids(db, "parent")
