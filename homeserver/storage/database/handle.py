"""The database handle: transactions, reads, dialect differences and stream positions.

Everything that differs between SQLite and PostgreSQL lives in this package and nowhere
else: ``sqlite`` (one reader, one writer, group commit), ``postgresql`` (two pools, pinned
reads), ``prepared`` (the lean path of prepared statements), and ``internals``, the one
module that reads SQLAlchemy's and asyncpg's private parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import UpdateBase

from homeserver.core.streams import Stream
from homeserver.storage.database.positions import (
    CURRENT,
    WriterPositions,
    committed_sql,
    next_value,
)
from homeserver.storage.database.postgresql import POOL_TIMEOUT_S, PostgresBackend
from homeserver.storage.database.prepared import (
    DIALECT_ONLY,
    DML_COLUMNS,
    PREPARED,
    Connection,
    Params,
    Plan,
    prepared,
)
from homeserver.storage.database.sqlite import SqliteBackend
from homeserver.storage.schema import stream_positions


class Database:
    """One database: ``write()`` yields a connection in one transaction, ``read()`` an
    autocommit one (each statement sees one consistent snapshot; no BEGIN/ROLLBACK).

    On SQLite one writer (group commit) and one WAL reader (``SqliteBackend``); on
    PostgreSQL, a pool of transaction connections and one of autocommit connections
    (``PostgresBackend``; its own commits share fsyncs already).
    """

    def __init__(
        self,
        url: str,
        pool_size: int = 10,
        pool_timeout_s: float = POOL_TIMEOUT_S,
        writer: str = "main",
    ) -> None:
        self.url = url
        self.pool_timeout_s = pool_timeout_s
        self.is_sqlite = url.startswith("sqlite")
        self._async_engine: AsyncEngine | None = None
        # Lean-path plans of prepared statements, by statement (and columns, for DML).
        self._plans: dict[Any, Plan | None] = {}
        self._ignoring: dict[tuple[str, tuple[str, ...]], sa.Insert] = {}
        # Statements built for this database's dialect, and the columns start-up compiles
        # them for (the ``columns`` of ``prepared``, which is for statements of any dialect).
        self._own_dml: dict[int, frozenset[str]] = {}
        self._sqlite: SqliteBackend | None = None
        self._pg: PostgresBackend | None = None
        # PostgreSQL: this handle as one of several writers of stream positions (None on
        # SQLite, one writer: a counter row per stream, locked until the commit).
        self.positions: WriterPositions | None = None
        # The allocations of each open write transaction (PostgreSQL).
        self._allocating: dict[Connection, list[int]] = {}
        # The highest positions read here: a reader never sees one go back.
        self._read_positions: dict[Stream, int] = {}
        if self.is_sqlite:
            self._sqlite = SqliteBackend(url, self._plans)
        else:
            self._pg = PostgresBackend(url, pool_size, pool_timeout_s, self._plans)
            self._async_engine = self._pg.engine
            self.positions = WriterPositions(writer, url)

    @property
    def engine(self) -> AsyncEngine:
        """An async engine for Alembic and tests (on SQLite, a separate aiosqlite one)."""
        if self._async_engine is None:
            self._async_engine = create_async_engine(self.url, poolclass=sa.NullPool)
        return self._async_engine

    @property
    def _sqlite_writer(self) -> sa.Engine:
        """SQLite's writer engine (tests listen to its events)."""
        assert self._sqlite is not None
        return self._sqlite.writer_engine

    def pool_use(self) -> list[tuple[str, int, int]]:
        """(pool, connections in use, pool size) for the metrics: PostgreSQL's two pools;
        nothing on SQLite (one writer and one reader, never waited for as a pool)."""
        return self._pg.pool_use() if self._pg is not None else []

    def write(self) -> AbstractAsyncContextManager[Connection]:
        """One transaction; on SQLite committed (on disk) when the block has ended."""
        if self._sqlite is not None:
            return self._sqlite.write()
        return self._pg_write()

    @asynccontextmanager
    async def _pg_write(self) -> AsyncIterator[Connection]:
        assert self._pg is not None and self.positions is not None
        keys: list[int] = []
        committed = False
        try:
            async with self._pg.write() as conn:
                self._allocating[conn] = keys
                try:
                    yield conn
                    if keys:
                        self.positions.check(keys)
                finally:
                    del self._allocating[conn]
            committed = True
        finally:
            if keys:
                self.positions.finish(keys)
                if not committed:
                    self.positions.request_flush()
        if keys:
            # The positions it took count as committed once this writer's row says so.
            await self.positions.flush()

    async def write_alone_position(
        self, stream: Stream, statement: Executable, parameters: Params = None
    ) -> int | None:
        """PostgreSQL: ``write_alone`` of a statement that takes one position of ``stream``
        from its sequence and returns it (or no row, having written nothing)."""
        positions = self.positions
        assert positions is not None
        key = await positions.begin(stream)
        done = False
        try:
            positions.check([key])
            value = (await self.write_alone(statement, parameters)).scalar()
            position = None if value is None else int(value)
            if position is not None:
                positions.allocated(key, position)
            done = True
        finally:
            positions.finish([key])
            if not done:
                positions.request_flush()
        await positions.flush()
        return position

    async def ping(self) -> None:
        """One trivial statement (``/health``); raises when the database cannot answer."""
        async with self.read() as conn:
            await conn.execute(_PING)

    async def start_positions(self) -> None:
        """PostgreSQL, at start-up: this writer's rows and heartbeats."""
        if self.positions is not None:
            await self.positions.start()

    def committed_position(self, stream: Stream) -> sa.ColumnElement[int]:
        """How far ``stream`` is committed, as an expression inside a statement (the value
        ``current_positions`` reads)."""
        if self.positions is None:
            return (
                sa.select(stream_positions.c.position)
                .where(stream_positions.c.stream == stream.value)
                .scalar_subquery()
            )
        return sa.literal_column(committed_sql(stream), type_=sa.BigInteger)

    def persisted_upto(self, stream: Stream) -> int | None:
        """How far ``stream`` is committed as this writer last computed it (after its own
        writes); None on SQLite (positions commit in order)."""
        if self.positions is None:
            return None
        return self.positions.upto.get(stream)

    async def write_alone(
        self, statement: Executable, parameters: Params = None
    ) -> CursorResult[*tuple[Any, ...]]:
        """One statement as a transaction of its own, committed when this returns.

        On PostgreSQL it runs on an autocommit connection: one round trip instead of three
        (BEGIN, the statement, COMMIT), and the row locks it takes are held only while the
        server runs it and flushes its commit, never across a round trip to this process,
        whose event loop may be busy with other requests when the answer comes. On SQLite
        it is a ``write()`` body like any other.
        """
        if self._pg is not None:
            return await self._pg.write_alone(statement, parameters)
        async with self.write() as conn:
            return await conn.execute(statement, parameters)

    def pinned_reads(self) -> AbstractAsyncContextManager[None]:
        """Every ``read()`` of this task inside shares one connection: one pool checkout for
        a computation of many statements, such as a sync. It is checked out by the first
        read, if any (the syncs a message to a big room wakes find what they read kept by
        the first of them, and must not queue for connections they do not use), and given
        back before the task waits for another request's read or for another connection,
        and when the block ends. Tasks started inside read from the pool. No-op on SQLite.
        """
        if self._pg is None:
            return nullcontext()
        return self._pg.pinned_reads()

    def read(self) -> AbstractAsyncContextManager[Connection]:
        """A connection for reads: SQLite's one reader, or the connection ``pinned_reads``
        holds, handed out as is (a connection is its own context manager); else one from
        PostgreSQL's autocommit pool."""
        if self._sqlite is not None:
            return self._sqlite.read()
        assert self._pg is not None
        return self._pg.read()

    async def prepare_statements(self) -> None:
        """At start-up rather than in the first requests: compiles the lean plans of every
        prepared read, and of every INSERT or UPDATE whose columns are known (a few dozen
        in a first send and sync), and on PostgreSQL opens every pooled connection and has
        it prepare them."""
        dialect = self._sqlite.dialect if self._sqlite is not None else self.engine.dialect
        for key, statement in list(PREPARED.items()):
            if DIALECT_ONLY.get(key, dialect.name) != dialect.name:
                continue
            if not isinstance(statement, UpdateBase):
                if key not in self._plans:
                    self._plans[key] = Plan.compile(statement, dialect, ())
            elif key in DML_COLUMNS or key in self._own_dml:
                columns = DML_COLUMNS.get(key) or self._own_dml[key]
                if (key, columns) not in self._plans:
                    self._plans[(key, columns)] = Plan.compile(statement, dialect, sorted(columns))
        if self._pg is not None:
            await self._pg.prepare(
                [
                    plan.sql
                    for plan in self._plans.values()
                    if plan is not None and plan.parts is None
                ]
            )

    async def close(self) -> None:
        if self.positions is not None:
            await self.positions.close()
        if self._sqlite is not None:
            await self._sqlite.close()
        if self._pg is not None:
            await self._pg.close()
        elif self._async_engine is not None:
            await self._async_engine.dispose()

    def upsert(
        self,
        table: sa.Table,
        row: Mapping[str, Any],
        keys: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> sa.Insert:
        """INSERT ... ON CONFLICT (keys) DO UPDATE the other columns (or ``update`` only)."""
        insert = sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)
        stmt = insert.values(**row)
        columns = update if update is not None else [c for c in row if c not in keys]
        if not columns:
            return stmt.on_conflict_do_nothing(index_elements=list(keys))
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
        )

    def insert_ignore_statement(
        self, table: sa.Table, keys: Sequence[str], columns: Sequence[str] | None = None
    ) -> sa.Insert:
        """INSERT ... ON CONFLICT (keys) DO NOTHING without values (bind them at execute),
        built once per table and keys; ``columns``, those it is always run with, lets
        start-up compile it (``prepared``)."""
        key = (table.name, tuple(keys))
        statement = self._ignoring.get(key)
        if statement is None:
            insert = sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)
            statement = self._ignoring[key] = prepared(
                insert.on_conflict_do_nothing(index_elements=list(keys))
            )
        if columns is not None:  # this database's dialect only: not in the global registry
            self._own_dml[id(statement)] = frozenset(columns)
        return statement

    def insert_ignore(
        self, table: sa.Table, row: Mapping[str, Any], keys: Sequence[str]
    ) -> sa.Insert:
        return self.insert_ignore_statement(table, keys).values(**row)

    async def next_position(self, conn: Connection, stream: Stream) -> int:
        """Allocate the next position of ``stream`` inside the caller's write transaction.

        SQLite: the counter row stays locked until the transaction ends, so positions commit
        in order. PostgreSQL: the stream's sequence, and this writer keeps the position in
        flight until the transaction has ended (``positions``), so that readers stop below
        it: whoever reads position N sees everything below N committed.
        """
        if self.positions is None:
            result = await conn.execute(_NEXT_POSITION, {"name": stream.value})
            return int(result.scalar_one())
        keys = self._allocating[conn]  # a write() transaction's connection
        key = await self.positions.begin(stream)
        keys.append(key)
        position = int((await conn.execute(_NEXT_VALUE[stream])).scalar_one())
        self.positions.allocated(key, position)
        return position

    async def current_positions(self, conn: Connection | None = None) -> dict[Stream, int]:
        """Every stream's position below which everything is committed."""
        statement = _POSITIONS if self.positions is None else CURRENT
        if conn is None:
            async with self.read() as c:
                rows = (await c.execute(statement)).all()
        else:
            rows = (await conn.execute(statement)).all()
        seen = self._read_positions
        for r in rows:
            stream = _STREAMS.get(r.stream)
            if stream is not None and int(r.position) > seen.get(stream, -1):
                seen[stream] = int(r.position)
        return {s: seen[s] for s in (_STREAMS[r.stream] for r in rows if r.stream in _STREAMS)}


_STREAMS = {s.value: s for s in Stream}
_POSITIONS = prepared(sa.select(stream_positions.c.stream, stream_positions.c.position))
_PING = sa.text("SELECT 1")
_NEXT_VALUE = {s: next_value(s) for s in Stream}
_NEXT_POSITION = prepared(
    sa.update(stream_positions)
    .where(stream_positions.c.stream == sa.bindparam("name"))
    .values(position=stream_positions.c.position + 1)
    .returning(stream_positions.c.position),
    columns=("name",),
)
