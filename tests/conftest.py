"""Fixtures: a database of each kind, a running homeserver, an HTTP client."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from homeserver.app import Homeserver
from homeserver.core import pool_guard
from homeserver.core.clock import FakeClock
from homeserver.core.config import HomeserverConfig, parse_config
from homeserver.core.streams import Stream
from homeserver.lifecycle import running_homeserver
from homeserver.storage.database import Database, LeanResult, PgConnection, SqliteConnection
from homeserver.storage.database.positions import sequence_name
from homeserver.storage.migrate import upgrade_head
from homeserver.storage.schema import metadata, stream_positions

# Holding a pooled connection across a wait for anything but the database raises in tests.
pool_guard.STRICT = True

PG_ADMIN_URL = os.environ.get("HS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--state-res-dags",
        type=int,
        default=None,
        help="How many random DAGs the Synapse differential test of state resolution runs "
        "(default: STATE_RES_DAGS, else a CI-sized count; the issue's full run is 1000).",
    )


@pytest.fixture(autouse=True, scope="session")
def lean_reads_checked() -> Iterator[None]:
    """Every read on the lean path (prepared statements, both databases) is run through
    SQLAlchemy too, and both must give the same rows: the same values of the same types,
    the same names."""
    lean = {cls: cls.execute for cls in (SqliteConnection, PgConnection)}

    def differences(got: list[Any], expected: Any) -> tuple[Any, ...] | None:
        keys, rows = list(expected.keys()), expected.all()
        typed = [[(type(v), v) for v in r] for r in got], [[(type(v), v) for v in r] for r in rows]
        if typed[0] != typed[1] or any(list(r._fields) != keys for r in got):
            return (*typed, keys)
        return None

    def is_read(result: Any, statement: Any) -> bool:
        # A SELECT with data-modifying CTEs (add_cte) writes: it runs once.
        return (
            isinstance(result, LeanResult)
            and isinstance(statement, sa.Select | sa.CompoundSelect)
            and not getattr(statement, "_independent_ctes", ())
        )

    async def checked(cls: type[Any], conn: Any, statement: Any, parameters: Any) -> Any:
        result = await lean[cls](conn, statement, parameters)
        if is_read(result, statement):
            # A commit between the two reads (autocommit reads, a concurrent writer: the
            # SQLite writer's thread, a PostgreSQL connection) can make them differ: read
            # both again; a real difference stays.
            for _ in range(5):
                expected = conn._conn.execute(statement, parameters)
                if cls is PgConnection:
                    expected = await expected
                found = differences(result.all(), expected)
                if found is None:
                    break
                result = await lean[cls](conn, statement, parameters)
            assert found is None, (statement, found)
        return result

    async def sqlite_checked(self: SqliteConnection, statement: Any, parameters: Any = None) -> Any:
        return await checked(SqliteConnection, self, statement, parameters)

    async def pg_checked(self: PgConnection, statement: Any, parameters: Any = None) -> Any:
        return await checked(PgConnection, self, statement, parameters)

    SqliteConnection.execute = sqlite_checked  # type: ignore[method-assign]
    PgConnection.execute = pg_checked  # type: ignore[method-assign]
    yield
    for cls, execute in lean.items():
        cls.execute = execute  # type: ignore[method-assign]


def in_thread(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to completion on its own loop (fixtures may run inside a test loop)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(factory())).result()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One PostgreSQL database for the whole run, migrated once; dropped at the end."""
    name = f"hs_test_{secrets.token_hex(4)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    in_thread(lambda: run(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{url}/{name}"

    async def migrate() -> None:
        db = Database(url)
        await upgrade_head(db.engine)
        await db.close()

    in_thread(migrate)
    yield url
    in_thread(lambda: run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def truncate(url: str) -> None:
    db = Database(url)
    try:
        async with db.write() as conn:
            names = ", ".join(
                f'"{t.name}"' for t in metadata.sorted_tables if t.name != "stream_positions"
            )
            await conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))
            await conn.execute(sa.update(stream_positions).values(position=0))
            for stream in Stream:  # the sequences of several writers start again too
                await conn.execute(sa.text(f"SELECT setval('{sequence_name(stream)}', 1, false)"))
    finally:
        await db.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied for each test instead of migrating each time."""
    path = tmp_path_factory.mktemp("template") / "homeserver.db"

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await upgrade_head(db.engine)
        await db.close()  # the last connection to close folds the WAL into the file

    in_thread(migrate)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "homeserver.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    await truncate(url)
    return url


def make_config(tmp_path: Path, db_url: str, **overrides: object) -> HomeserverConfig:
    data: dict[str, object] = {
        "server_name": "test",
        "data_dir": str(tmp_path),
        "database": {"url": db_url},
        "registration": {"enabled": True},
        "rate_limits": {"enabled": False},
        # Cheap hashing keeps the suite fast; production defaults are tested in unit tests.
        "auth": {"password_hash_memory_kib": 64, "password_hash_time_cost": 1},
    }
    data.update(overrides)
    return parse_config(data)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> HomeserverConfig:
    return make_config(tmp_path, db_url)


@pytest.fixture
async def hs(config: HomeserverConfig, clock: FakeClock) -> AsyncIterator[Homeserver]:
    # db_url is migrated already (template copy or per-run database).
    async with running_homeserver(config, clock=clock, migrate=False) as server:
        yield server


@pytest.fixture
async def client(hs: Homeserver) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=hs.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
