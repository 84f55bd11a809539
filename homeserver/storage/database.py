"""The database handle: engines, transactions, dialect differences and stream positions.

Everything that differs between SQLite and PostgreSQL lives here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from homeserver.storage.schema import stream_positions
from homeserver.streams import Stream


class Database:
    """One database: ``read()`` and ``write()`` each yield a connection in one transaction.

    On SQLite there is one writer connection behind an asyncio lock, and the writer starts
    with ``BEGIN IMMEDIATE`` so that a write never fails half-way on a lock upgrade; reads
    go to a pool of WAL readers. On PostgreSQL both use one pool.
    """

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self._writer = _sqlite_engine(url, begin="BEGIN IMMEDIATE", pool_size=1)
            # Readers run each statement on its own (autocommit): in WAL mode one statement
            # sees one consistent snapshot, and a read costs no BEGIN/ROLLBACK round trips.
            self._reader = _sqlite_engine(url, begin=None, pool_size=pool_size)
        else:
            self._writer = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size,
                                               pool_pre_ping=False)
            self._reader = self._writer
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @property
    def engine(self) -> AsyncEngine:
        return self._writer

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is not None:
            async with self._write_lock, self._writer.begin() as conn:
                yield conn
        else:
            async with self._writer.begin() as conn:
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.connect() as conn:
            if self.is_sqlite:
                yield conn
                return
            async with conn.begin():
                yield conn

    async def close(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()

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

    def insert_ignore(self, table: sa.Table, row: Mapping[str, Any],
                      keys: Sequence[str]) -> sa.Insert:
        insert = sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)
        return insert.values(**row).on_conflict_do_nothing(index_elements=list(keys))

    async def next_position(self, conn: AsyncConnection, stream: Stream) -> int:
        """Allocate the next position of ``stream`` inside the caller's write transaction.

        The row stays locked until the transaction ends, so positions commit in order on
        every worker: whoever reads position N sees everything below N committed.
        """
        result = await conn.execute(
            sa.update(stream_positions).where(stream_positions.c.stream == stream.value)
            .values(position=stream_positions.c.position + 1)
            .returning(stream_positions.c.position))
        return int(result.scalar_one())

    async def current_positions(self, conn: AsyncConnection | None = None) -> dict[Stream, int]:
        query = sa.select(stream_positions.c.stream, stream_positions.c.position)
        if conn is None:
            async with self.read() as c:
                rows = (await c.execute(query)).all()
        else:
            rows = (await conn.execute(query)).all()
        known = {s.value: s for s in Stream}
        return {known[r.stream]: int(r.position) for r in rows if r.stream in known}


def _sqlite_engine(url: str, *, begin: str | None, pool_size: int) -> AsyncEngine:
    """``begin``: the statement that opens a transaction; None for an autocommit reader."""
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0,
                                 pool_reset_on_return="rollback" if begin else None)

    @event.listens_for(engine.sync_engine, "connect")
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

    if begin is not None:
        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

    return engine
