"""The database handle: transactions, reads, dialect differences and stream positions.

Everything that differs between SQLite and PostgreSQL lives in this package and nowhere
else: ``sqlite`` (one reader, one writer, group commit), ``postgresql`` (two pools, pinned
reads), ``prepared`` (the lean path of prepared statements), and ``internals``, the one
module that reads SQLAlchemy's and asyncpg's private parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import UpdateBase

from homeserver.core.streams import Stream
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
        self, url: str, pool_size: int = 10, pool_timeout_s: float = POOL_TIMEOUT_S
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
        if self.is_sqlite:
            self._sqlite = SqliteBackend(url, self._plans)
        else:
            self._pg = PostgresBackend(url, pool_size, pool_timeout_s, self._plans)
            self._async_engine = self._pg.engine

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
        assert self._pg is not None
        return self._pg.write()

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
        return {_STREAMS[r.stream]: int(r.position) for r in rows if r.stream in _STREAMS}


_STREAMS = {s.value: s for s in Stream}
_POSITIONS = prepared(sa.select(stream_positions.c.stream, stream_positions.c.position))
_NEXT_POSITION = prepared(
    sa.update(stream_positions)
    .where(stream_positions.c.stream == sa.bindparam("name"))
    .values(position=stream_positions.c.position + 1)
    .returning(stream_positions.c.position),
    columns=("name",),
)
