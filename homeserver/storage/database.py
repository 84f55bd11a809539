"""The database handle: engines, transactions, dialect differences and stream positions.

Everything that differs between SQLite and PostgreSQL lives here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar, TypeVarTuple, overload

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

from homeserver.storage.schema import stream_positions
from homeserver.streams import Stream

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


class Connection(Protocol):
    """What storage code uses of a connection: ``await conn.execute(statement, params)``.

    On PostgreSQL it is SQLAlchemy's ``AsyncConnection``; on SQLite a ``SqliteConnection``.
    """

    @overload
    async def execute(self, statement: TypedReturnsRows[*Ts],
                      parameters: Params = None) -> CursorResult[*Ts]: ...

    @overload
    async def execute(self, statement: Executable,
                      parameters: Params = None) -> CursorResult[*tuple[Any, ...]]: ...


_POSITIONS = sa.select(stream_positions.c.stream, stream_positions.c.position)
_NEXT_POSITION = (sa.update(stream_positions)
                  .where(stream_positions.c.stream == sa.bindparam("name"))
                  .values(position=stream_positions.c.position + 1)
                  .returning(stream_positions.c.position))


class SqliteConnection:
    """A synchronous SQLAlchemy connection behind the awaitable ``execute`` storage uses.

    SQLite statements run on the event-loop thread: an indexed read or a write before the
    commit takes tens of microseconds, far less than handing it to a thread and back (what
    aiosqlite does for every statement, several times over). Only the steps that may wait
    on the disk or on another process's lock (BEGIN IMMEDIATE, COMMIT with its fsync) go to
    the writer's own thread.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    @overload
    async def execute(self, statement: TypedReturnsRows[*Ts],
                      parameters: Params = None) -> CursorResult[*Ts]: ...

    @overload
    async def execute(self, statement: Executable,
                      parameters: Params = None) -> CursorResult[*tuple[Any, ...]]: ...

    async def execute(self, statement: Executable,
                      parameters: Params = None) -> CursorResult[*tuple[Any, ...]]:
        return self._conn.execute(statement, parameters)


class Database:
    """One database: ``write()`` yields a connection in one transaction, ``read()`` an
    autocommit one (each statement sees one consistent snapshot; no BEGIN/ROLLBACK).

    On SQLite there is one writer connection behind an asyncio lock, and the writer starts
    with ``BEGIN IMMEDIATE`` so that a write never fails half-way on a lock upgrade; reads
    go to one WAL reader. On PostgreSQL, two asyncpg pools: transactions and autocommit.
    """

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._async_engine: AsyncEngine | None = None
        self._ignoring: dict[tuple[str, tuple[str, ...]], sa.Insert] = {}
        if self.is_sqlite:
            sync_url = sa.make_url(url).set(drivername="sqlite")
            self._sqlite_writer = _sqlite_engine(sync_url, writer=True)
            self._sqlite_reader = _sqlite_engine(sync_url, writer=False)
            self._read_conn: SqliteConnection | None = None
            self._write_conn: sa.Connection | None = None
            # The writer's thread: BEGIN and COMMIT, one at a time, in order.
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            self._write_lock = asyncio.Lock()
        else:
            self._async_engine = create_async_engine(url, pool_size=pool_size,
                                                     max_overflow=pool_size,
                                                     pool_pre_ping=False)
            # Reads are autocommit: no BEGIN and ROLLBACK round trips around each one (read
            # committed gives every statement its own snapshot either way).
            self._pg_reader = create_async_engine(url, pool_size=pool_size,
                                                  max_overflow=pool_size, pool_pre_ping=False,
                                                  isolation_level="AUTOCOMMIT",
                                                  pool_reset_on_return=None)
        # The read connection that pinned_reads() holds for the current task, if any.
        self._pinned: ContextVar[Connection | None] = ContextVar(f"pinned-{id(self)}",
                                                                 default=None)

    @property
    def engine(self) -> AsyncEngine:
        """An async engine for Alembic and tests (on SQLite, a separate aiosqlite one)."""
        if self._async_engine is None:
            self._async_engine = create_async_engine(self.url, poolclass=sa.NullPool)
        return self._async_engine

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        if not self.is_sqlite:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock:
            writer = self._write_conn
            if writer is None:
                writer = self._write_conn = await self._in_writer_thread(
                    self._sqlite_writer.connect)
            try:
                transaction = await self._in_writer_thread(writer.begin)
                yield SqliteConnection(writer)
                await self._in_writer_thread(transaction.commit)
            except BaseException:
                # A failed body, a failed COMMIT (a deferred constraint, a full disk) or a
                # cancellation leaves nothing half-done and the connection ready for the next
                # transaction.
                if writer.get_transaction() is not None:  # active, or failed to commit
                    writer.rollback()
                # SQLite keeps a transaction whose COMMIT failed open; so does its driver.
                raw = writer.connection.dbapi_connection
                if raw is not None and raw.in_transaction:
                    raw.rollback()
                raise

    async def _in_writer_thread(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on the writer's thread; a cancelled caller still waits for it to end,
        so the writer connection is never used by two threads at once."""
        future = asyncio.get_running_loop().run_in_executor(self._write_thread, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await future
            raise

    @asynccontextmanager
    async def pinned_reads(self) -> AsyncIterator[None]:
        """Every ``read()`` inside shares one connection: one pool checkout (about 0.3 ms of
        CPU on PostgreSQL) for a computation of many statements, such as a sync. The code
        inside must not read from concurrent tasks (they would share the connection)."""
        if self.is_sqlite or self._pinned.get() is not None:
            yield
            return
        async with self._pg_reader.connect() as conn:
            token = self._pinned.set(conn)
            try:
                yield
            finally:
                self._pinned.reset(token)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        if not self.is_sqlite:
            pinned = self._pinned.get()
            if pinned is not None:
                yield pinned
                return
            async with self._pg_reader.connect() as conn:
                yield conn
            return
        if self._read_conn is None:
            self._read_conn = SqliteConnection(self._sqlite_reader.connect())
        yield self._read_conn

    async def close(self) -> None:
        if self.is_sqlite:
            if self._write_conn is not None:
                await self._in_writer_thread(self._write_conn.close)
                self._write_conn = None
            if self._read_conn is not None:
                self._read_conn._conn.close()
                self._read_conn = None
            self._sqlite_writer.dispose()
            self._sqlite_reader.dispose()
            self._write_thread.shutdown(wait=True)
        else:
            await self._pg_reader.dispose()
        if self._async_engine is not None:
            await self._async_engine.dispose()

    def upsert(self, table: sa.Table, row: Mapping[str, Any], keys: Sequence[str],
               update: Sequence[str] | None = None) -> sa.Insert:
        """INSERT ... ON CONFLICT (keys) DO UPDATE the other columns (or ``update`` only)."""
        insert = sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)
        stmt = insert.values(**row)
        columns = update if update is not None else [c for c in row if c not in keys]
        if not columns:
            return stmt.on_conflict_do_nothing(index_elements=list(keys))
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns})

    def insert_ignore_statement(self, table: sa.Table, keys: Sequence[str]) -> sa.Insert:
        """INSERT ... ON CONFLICT (keys) DO NOTHING without values (bind them at execute),
        built once per table and keys."""
        key = (table.name, tuple(keys))
        statement = self._ignoring.get(key)
        if statement is None:
            insert = sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)
            statement = self._ignoring[key] = insert.on_conflict_do_nothing(
                index_elements=list(keys))
        return statement

    def insert_ignore(self, table: sa.Table, row: Mapping[str, Any],
                      keys: Sequence[str]) -> sa.Insert:
        return self.insert_ignore_statement(table, keys).values(**row)

    async def next_position(self, conn: Connection, stream: Stream) -> int:
        """Allocate the next position of ``stream`` inside the caller's write transaction.

        The row stays locked until the transaction ends, so positions commit in order on
        every worker: whoever reads position N sees everything below N committed.
        """
        result = await conn.execute(_NEXT_POSITION, {"name": stream.value})
        return int(result.scalar_one())

    async def current_positions(self, conn: Connection | None = None) -> dict[Stream, int]:
        if conn is None:
            async with self.read() as c:
                rows = (await c.execute(_POSITIONS)).all()
        else:
            rows = (await conn.execute(_POSITIONS)).all()
        known = {s.value: s for s in Stream}
        return {known[r.stream]: int(r.position) for r in rows if r.stream in known}


def _sqlite_engine(url: sa.URL, *, writer: bool) -> sa.Engine:
    """The writer begins with BEGIN IMMEDIATE; the reader never begins (autocommit)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool,
                              connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN itself (pysqlite's own transaction
        # handling would defer it and break BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss, not only a crash; "acknowledged is never lost".
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if writer:
        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Take the write lock at once, so a write never fails half-way on an upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
