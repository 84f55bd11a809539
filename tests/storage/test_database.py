"""The SQLite handle: statements on the event loop, BEGIN and COMMIT on the writer's thread,
group commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from homeserver.storage.database import Database

# A foreign key checked only at COMMIT: the way to make a real COMMIT fail.
SCHEMA = (
    "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
    "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
)


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
        return list((await conn.execute(sa.text(f"SELECT id FROM {table} ORDER BY id"))).scalars())


async def _writes_again(db: Database, parent: int) -> None:
    """The writer takes the next transaction: a child of ``parent`` (new) as child 1."""
    async with db.write() as conn:
        await conn.execute(sa.text("INSERT INTO parent VALUES (:p)"), {"p": parent})
        await conn.execute(sa.text("INSERT INTO child VALUES (1, :p)"), {"p": parent})
    assert await _ids(db, "child") == [1]


async def test_a_failed_commit_leaves_nothing_and_the_writer_usable(db: Database) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO child VALUES (1, 99)"))
    assert await _ids(db, "child") == []
    await _writes_again(db, 99)


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


def _count_commits(db: Database) -> list[int]:
    commits = [0]

    @event.listens_for(db._sqlite_writer, "commit")
    def _commit(_conn: Any) -> None:
        commits[0] += 1

    return commits


async def test_writers_that_queue_share_one_commit(db: Database) -> None:
    commits = _count_commits(db)

    async def write(n: int) -> None:
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO parent VALUES (:n)"), {"n": n})
        # Returned: committed, visible to readers.
        assert n in await _ids(db, "parent")

    await asyncio.gather(*(write(n) for n in range(1, 31)))
    assert await _ids(db, "parent") == list(range(1, 31))
    assert 1 <= commits[0] < 30
    # A single writer waiting is no queue: each commits on its own (its COMMIT overlaps the
    # event loop's other work instead of waiting for the other body).
    commits[0] = 0
    await asyncio.gather(write(31), write(32))
    assert commits[0] == 2


async def test_a_failed_body_in_a_group_undoes_only_itself(db: Database) -> None:
    async def write(n: int) -> None:
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO parent VALUES (:n)"), {"n": n})
            if n % 3 == 0:
                raise RuntimeError(f"body {n} changed its mind")

    results = await asyncio.gather(*(write(n) for n in range(1, 13)), return_exceptions=True)
    assert [
        n for n, r in zip(range(1, 13), results, strict=True) if isinstance(r, RuntimeError)
    ] == [3, 6, 9, 12]
    assert await _ids(db, "parent") == [1, 2, 4, 5, 7, 8, 10, 11]


async def test_a_failed_group_commit_fails_every_member(db: Database) -> None:
    async def write(n: int, parent: int) -> None:
        async with db.write() as conn:
            # Deferred: a missing parent is only found by COMMIT.
            await conn.execute(sa.text("INSERT INTO child VALUES (:n, :p)"), {"n": n, "p": parent})

    results = await asyncio.gather(write(1, 1), write(2, 99), write(3, 1), return_exceptions=True)
    # Those that shared the failed COMMIT were not acknowledged, and nothing was kept.
    assert any(isinstance(r, sa.exc.IntegrityError) for r in results)
    assert all(r is None or isinstance(r, sa.exc.IntegrityError) for r in results)
    assert await _ids(db, "child") == []
    await _writes_again(db, 1)


async def test_a_writer_cancelled_in_the_queue_does_not_hold_up_the_group(db: Database) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO parent VALUES (1)"))
            started.set()
            await release.wait()

    async def write(n: int) -> None:
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO parent VALUES (:n)"), {"n": n})

    tasks = [asyncio.create_task(first())]
    await started.wait()
    tasks += [asyncio.create_task(write(n)) for n in (2, 3)]
    await asyncio.sleep(0)  # both queued behind the first
    tasks[1].cancel()
    release.set()
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert isinstance(done[1], asyncio.CancelledError)
    assert await _ids(db, "parent") == [1, 3]


async def test_a_group_whose_transaction_is_gone_fails_and_the_writer_recovers(
    db: Database,
) -> None:
    async def write(n: int) -> None:
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO parent VALUES (:n)"), {"n": n})
            if n == 2:  # as an I/O error would: SQLite ends the whole transaction
                await conn.execute(sa.text("ROLLBACK"))

    results = await asyncio.gather(*(write(n) for n in range(1, 5)), return_exceptions=True)
    # Those that shared the lost transaction were not acknowledged; none was kept.
    assert isinstance(results[1], sa.exc.OperationalError)
    acknowledged = {n for n, r in zip(range(1, 5), results, strict=True) if r is None}
    assert set(await _ids(db, "parent")) == acknowledged
    async with db.write() as conn:
        await conn.execute(sa.text("INSERT INTO parent VALUES (9)"))
    assert 9 in await _ids(db, "parent")
