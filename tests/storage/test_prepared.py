"""Prepared statements on the lean path, both databases: the same rows, conversions, errors
and counts as through SQLAlchemy (every lean read is also compared with SQLAlchemy's in
the suite: tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from homeserver.storage.database import Database, LeanResult, prepared
from homeserver.storage.migrate import upgrade_head
from homeserver.storage.schema import filters, users

# A list expanded between other values: on PostgreSQL the $n after it are renumbered.
_USERS = prepared(
    sa.select(users.c.user_id, users.c.is_admin, users.c.created_ts)
    .where(
        users.c.created_ts > sa.bindparam("after"),
        users.c.user_id.in_(sa.bindparam("ids", expanding=True)),
        users.c.is_admin == sa.bindparam("admin"),
    )
    .order_by(users.c.user_id)
    .limit(sa.bindparam("limit"))
)
_ADD_USER = prepared(sa.insert(users))
_PROMOTE = prepared(
    sa.update(users).where(users.c.created_ts >= sa.bindparam("since")).values(is_admin=True)
)
_ADD_FILTER = prepared(sa.insert(filters))
_FILTER = prepared(
    sa.select(filters.c.filter_json).where(filters.c.user_id == sa.bindparam("user_id"))
)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await upgrade_head(database.engine)
    await database.prepare_statements()
    try:
        yield database
    finally:
        await database.close()


async def _add(db: Database, *rows: tuple[str, bool, int]) -> None:
    async with db.write() as conn:
        for user_id, admin, ts in rows:
            await conn.execute(
                _ADD_USER,
                {
                    "user_id": user_id,
                    "password_hash": None,
                    "is_admin": admin,
                    "deactivated": False,
                    "created_ts": ts,
                },
            )


async def test_values_in_place_and_a_list_in_the_middle(db: Database) -> None:
    await _add(db, ("@a:t", False, 1), ("@b:t", False, 2), ("@c:t", True, 3), ("@d:t", False, 4))
    async with db.read() as conn:
        result = await conn.execute(
            _USERS,
            {"after": 1, "ids": ["@d:t", "@b:t", "@c:t", "@x:t"], "admin": False, "limit": 10},
        )
        assert isinstance(result, LeanResult)
        rows = result.all()
        assert [tuple(r) for r in rows] == [("@b:t", False, 2), ("@d:t", False, 4)]
        assert rows[0].is_admin is False and rows[0].created_ts == 2
        assert rows[0]._mapping == {"user_id": "@b:t", "is_admin": False, "created_ts": 2}
        # Another length of the same list, and a single row's accessors.
        one = await conn.execute(_USERS, {"after": 0, "ids": ["@c:t"], "admin": True, "limit": 1})
        assert one.scalar() == "@c:t"
        assert one.one().is_admin is True


async def test_json_is_converted_both_ways(db: Database) -> None:
    await _add(db, ("@a:t", False, 1))
    async with db.write() as conn:
        await conn.execute(
            _ADD_FILTER,
            {
                "user_id": "@a:t",
                "filter_id": 0,
                "filter_json": {"room": {"timeline": {"limit": 5}}},
            },
        )
    async with db.read() as conn:
        assert (await conn.execute(_FILTER, {"user_id": "@a:t"})).scalar_one() == {
            "room": {"timeline": {"limit": 5}}
        }


async def test_counts_of_changed_rows(db: Database) -> None:
    await _add(db, ("@a:t", False, 1), ("@b:t", False, 2), ("@c:t", False, 3))
    async with db.write() as conn:
        result = await conn.execute(_PROMOTE, {"since": 2})
        assert isinstance(result, LeanResult) and result.rowcount == 2


async def test_a_constraint_error_is_sqlalchemys_and_rolls_back(db: Database) -> None:
    await _add(db, ("@a:t", False, 1))
    with pytest.raises(sa.exc.IntegrityError):
        async with db.write() as conn:
            await conn.execute(_PROMOTE, {"since": 0})
            await conn.execute(
                _ADD_USER,
                {
                    "user_id": "@a:t",
                    "password_hash": None,
                    "is_admin": False,
                    "deactivated": False,
                    "created_ts": 9,
                },
            )
    # Nothing of the failed transaction is left, and the next one works.
    await _add(db, ("@b:t", False, 2))
    async with db.read() as conn:
        rows = (
            await conn.execute(
                _USERS, {"after": 0, "ids": ["@a:t", "@b:t"], "admin": False, "limit": 10}
            )
        ).all()
    assert [r.user_id for r in rows] == ["@a:t", "@b:t"]


async def test_what_the_lean_path_leaves_to_sqlalchemy(db: Database) -> None:
    # Python-side column defaults: SQLAlchemy fills them in (the lean path would write NULL).
    async with db.write() as conn:
        await conn.execute(_ADD_USER, {"user_id": "@a:t", "created_ts": 1})
    async with db.read() as conn:
        rows = (
            await conn.execute(_USERS, {"after": 0, "ids": ["@a:t"], "admin": False, "limit": 5})
        ).all()
        assert [r.user_id for r in rows] == ["@a:t"]
        # An empty list, which SQLAlchemy renders as an empty set.
        empty = await conn.execute(_USERS, {"after": 0, "ids": [], "admin": False, "limit": 5})
        assert not isinstance(empty, LeanResult) and empty.all() == []
        # A missing value: SQLAlchemy's error, not a NULL compared.
        with pytest.raises(sa.exc.StatementError):
            await conn.execute(_USERS, {"ids": ["@a:t"], "admin": False, "limit": 5})


def _user(user_id: str, ts: int, **extra: object) -> dict[str, object]:
    return {
        "user_id": user_id,
        "password_hash": None,
        "is_admin": False,
        "deactivated": False,
        "created_ts": ts,
        **extra,
    }


async def test_many_rows_of_values_in_one_execution(db: Database) -> None:
    async with db.write() as conn:
        result = await conn.execute(_ADD_USER, [_user(f"@{i}:t", i) for i in range(5)])
        assert isinstance(result, LeanResult)
        # Rows that leave Python-side defaults to fill in: SQLAlchemy runs them.
        defaults = await conn.execute(
            _ADD_USER, [{"user_id": "@x:t", "created_ts": 7}, {"user_id": "@y:t", "created_ts": 8}]
        )
        assert not isinstance(defaults, LeanResult)
    async with db.read() as conn:
        rows = (
            await conn.execute(
                _USERS,
                {
                    "after": -1,
                    "admin": False,
                    "limit": 10,
                    "ids": [f"@{i}:t" for i in range(5)] + ["@x:t"],
                },
            )
        ).all()
    assert [(r.user_id, r.created_ts) for r in rows] == [(f"@{i}:t", i) for i in range(5)] + [
        ("@x:t", 7)
    ]
    # A duplicate among the rows: SQLAlchemy's error, and none of them is kept.
    with pytest.raises(sa.exc.IntegrityError):
        async with db.write() as conn:
            await conn.execute(_ADD_USER, [_user("@new:t", 20), _user("@0:t", 21)])
    async with db.read() as conn:
        assert (
            await conn.execute(
                _USERS, {"after": -1, "admin": False, "limit": 10, "ids": ["@new:t"]}
            )
        ).all() == []


# --- PostgreSQL's read connections, kept out of SQLAlchemy's pool between uses --------------


async def _backend_pid(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())


async def test_pg_reads_reuse_a_connection_and_drop_a_broken_one(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("PostgreSQL's read pool")
    first = await _backend_pid(db)
    assert await _backend_pid(db) == first  # the most recently used comes back
    # An error that is not the database's leaves the connection as it was.
    with pytest.raises(ValueError):
        async with db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
            raise ValueError("a caller's own error")
    assert await _backend_pid(db) == first
    # A database error: never reused (it may be broken); a new one takes its place.
    with pytest.raises(sa.exc.DBAPIError):
        async with db.read() as conn:
            await conn.execute(sa.text("SELECT 1/0"))
    second = await _backend_pid(db)
    assert second != first
    # Killed by the server: the read that finds out fails, the next one works.
    async with db.write() as conn:
        await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": second})
    with pytest.raises(sa.exc.DBAPIError):
        await _backend_pid(db)
    assert await _backend_pid(db) not in (first, second)


async def test_pg_a_read_cancelled_mid_statement_does_not_come_back(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("PostgreSQL's read pool")
    first = await _backend_pid(db)
    started = asyncio.Event()

    async def slow() -> None:
        async with db.read() as conn:
            started.set()
            await conn.execute(sa.text("SELECT pg_sleep(30)"))

    task = asyncio.create_task(slow())
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _backend_pid(db) != first
    async with db.read() as conn:
        assert (await conn.execute(_FILTER, {"user_id": "@nobody:t"})).all() == []


async def test_pg_reads_wait_for_a_connection_when_all_are_in_use(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's read pool")
    db = Database(db_url, pool_size=1)  # two read connections
    try:
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with db.read() as conn:
                await conn.execute(sa.text("SELECT 1"))
                held.set()
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await held.wait()
        await asyncio.sleep(0)
        waiter = asyncio.create_task(_backend_pid(db))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        release.set()
        await asyncio.gather(*holders)
        assert await waiter > 0
    finally:
        await db.close()


async def test_pg_pinned_reads_take_a_connection_at_their_first_read(db_url: str) -> None:
    """A pinned computation that reads nothing (a woken sync whose reads another sync did)
    takes no connection; one that reads keeps one connection for all its reads, and one
    whose read failed on the database gives it up for good."""
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's read pool")
    db = Database(db_url, pool_size=1)  # two read connections
    try:
        release = asyncio.Event()
        entered = 0

        async def reads_nothing() -> None:
            nonlocal entered
            async with db.pinned_reads():
                entered += 1
                await release.wait()

        idle = [asyncio.create_task(reads_nothing()) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert entered == 5  # none waited for one of the two connections
        async with db.pinned_reads():
            first = await _backend_pid(db)
            assert await _backend_pid(db) == first
        release.set()
        await asyncio.gather(*idle)

        with pytest.raises(sa.exc.DBAPIError):
            async with db.pinned_reads():
                assert await _backend_pid(db) == first
                async with db.read() as conn:
                    await conn.execute(sa.text("SELECT 1/0"))
        assert await _backend_pid(db) != first
    finally:
        await db.close()
