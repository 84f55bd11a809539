"""PostgreSQL: a pool of transaction connections and a pool of autocommit ones.

Reads and one-statement writes (``write_alone``) are autocommit: no BEGIN and ROLLBACK
round trips around each, and read committed gives every statement its own snapshot either
way. No request holds a connection while it waits for anything but the database
(``pool_guard``); one that gets none in time gets ``PoolExhausted``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import Any, cast, overload

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

from homeserver.core.pool_guard import (
    before_waiting,
    current_task,
    drop,
    exhausted,
    hold,
    keep_pin,
)
from homeserver.storage.database.internals import asyncpg_execute, asyncpg_prepare
from homeserver.storage.database.prepared import (
    Connection,
    LeanResult,
    Params,
    Plan,
    Ts,
    lean,
)


class PgConnection:
    """SQLAlchemy's ``AsyncConnection`` behind ``execute``; ``prepared`` statements skip
    SQLAlchemy's execution machinery and its greenlet hand-off and go to asyncpg through
    SQLAlchemy's own connection adapter."""

    __slots__ = ("_adapter", "_conn", "_plans")

    def __init__(self, conn: AsyncConnection, plans: dict[Any, Plan | None]) -> None:
        self._conn = conn
        self._plans = plans
        self._adapter: Any = None

    async def __aenter__(self) -> Connection:
        """A connection is its own context manager: ``read()`` hands it out as it is."""
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*Ts], parameters: Params = None
    ) -> CursorResult[*Ts]: ...

    @overload
    async def execute(
        self, statement: Executable, parameters: Params = None
    ) -> CursorResult[*tuple[Any, ...]]: ...

    async def execute(
        self, statement: Executable, parameters: Params = None
    ) -> CursorResult[*tuple[Any, ...]]:
        dialect = self._conn.dialect
        found = lean(self._plans, statement, parameters, dialect)
        if found is None:
            return await self._conn.execute(statement, parameters)
        plan, sql, values, many = found
        adapter = self._adapter if self._adapter is not None else await self.adapter()
        raw, rowcount = await asyncpg_execute(adapter, sql, values, dialect, many)
        return cast("CursorResult[*tuple[Any, ...]]", LeanResult(plan.rows(raw), rowcount))

    async def adapter(self) -> Any:
        """SQLAlchemy's asyncpg connection adapter under this connection."""
        if self._adapter is None:
            self._adapter = (await self._conn.get_raw_connection()).dbapi_connection
        return self._adapter

    async def close(self) -> None:
        await self._conn.close()

    async def discard(self) -> None:
        """Closes it for good: SQLAlchemy's pool drops it instead of taking it back."""
        try:
            await self._conn.invalidate()
        finally:
            await self._conn.close()


# How long a request waits for a connection when all are in use, by default (config:
# database.pool_timeout_ms); then it gets a 503. Nothing holds a connection across a wait
# for anything but the database, but a connection is held until its task runs again: with
# the worker's CPU saturated that takes turns of a long event loop, and a long-poll client
# is better served by waiting than by a retry. A wait this long means sustained overload.
POOL_TIMEOUT_S = 30.0


class AutocommitPool:
    """PostgreSQL's autocommit connections (reads, and ``Database.write_alone``), kept
    checked out of SQLAlchemy's pool between uses.

    Checking a connection out of SQLAlchemy's async engine and back costs three greenlet
    hand-offs and the pool's bookkeeping, and every woken sync takes two.
    Here a read takes an idle connection off a list and puts it back. A connection whose
    user failed on the database or was cancelled is invalidated and given back to
    SQLAlchemy, which discards it; its place is opened again by the next read that needs it.
    ``None`` in the list is such a free place.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        size: int,
        plans: dict[Any, Plan | None],
        timeout_s: float = POOL_TIMEOUT_S,
    ) -> None:
        self._engine = engine
        self._plans = plans
        self.size = size
        self.timeout_s = timeout_s
        self._idle: asyncio.LifoQueue[PgConnection | None] = asyncio.LifoQueue()
        for _ in range(size):
            self._idle.put_nowait(None)

    @property
    def in_use(self) -> int:
        """Connections handed out now (the metrics)."""
        return self.size - self._idle.qsize()

    async def acquire(self) -> PgConnection:
        try:  # the most recently used, whose caches are warm
            item = self._idle.get_nowait()
        except asyncio.QueueEmpty:
            item = await self._wait_for_one()
        if item is None:
            try:
                item = PgConnection(await self._engine.connect(), self._plans)
                await item.adapter()
            except BaseException:
                self._idle.put_nowait(None)
                raise
        return item

    async def _wait_for_one(self) -> PgConnection | None:
        """The next connection given back, in order of asking; PoolExhausted after
        ``timeout_s``."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._idle.get()
        except TimeoutError:
            raise exhausted(
                f"all {self.size} read connections stayed in use for {self.timeout_s} s",
                max(1.0, self.timeout_s / 2),
            ) from None

    async def release(self, item: PgConnection, error: BaseException | None) -> None:
        if error is None or not isinstance(error, CONNECTION_SUSPECT):
            self._idle.put_nowait(item)
            return
        try:
            await item.discard()
        finally:
            self._idle.put_nowait(None)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PgConnection]:
        # A task that holds a connection and waits for another can deadlock the pool: every
        # connection held by tasks that each wait for one more. A pinned one goes back first.
        await before_waiting("another database connection")
        item = await self.acquire()
        task = current_task()
        hold(task)
        try:
            yield item
        except BaseException as error:
            drop(task)
            await self.release(item, error)
            raise
        drop(task)
        await self.release(item, None)

    async def close(self) -> None:
        """Gives the idle connections back to SQLAlchemy (at shut-down)."""
        while not self._idle.empty():
            item = self._idle.get_nowait()
            if item is not None:
                await item.close()


class Pin:
    """The read connection ``pinned_reads`` holds for its task, checked out by its first
    read (a read is ``async with``) and kept until the pin ends, or until the task waits
    for something other than the database (``pool_guard.before_waiting``): the next read
    takes one again. Kept between reads even when others wait: a computation that has a
    connection finishes, rather than queue again for each of its reads behind every
    request that came after it (which, with the CPU saturated, makes each of them as slow
    as all of them together). Only its own task reads through it (a task it starts has a copy of its
    context, and reads from the pool)."""

    __slots__ = ("_pool", "conn", "error", "owner", "reading")

    def __init__(self, pool: AutocommitPool) -> None:
        self._pool = pool
        self.owner = current_task()
        self.conn: PgConnection | None = None
        self.error: BaseException | None = None  # of a read, for the release
        self.reading = 0  # reads under way: the connection is not given back under them

    async def __aenter__(self) -> Connection:
        if self.conn is None:
            conn = await self._pool.acquire()
            hold(self.owner)
            keep_pin(self.owner, self)
            self.conn = conn
        self.reading += 1
        return self.conn

    async def __aexit__(self, _type: object, error: BaseException | None, _tb: object) -> None:
        self.reading -= 1
        if error is not None and isinstance(error, CONNECTION_SUSPECT):
            self.error = error

    async def give_back(self, error: BaseException | None = None) -> None:
        """Returns the connection to the pool (if it has one and no read is under way)."""
        conn = self.conn
        if conn is None or self.reading:
            return
        self.conn = None
        drop(self.owner, self)
        failed, self.error = self.error or error, None
        await self._pool.release(conn, failed)


# After these a connection may be mid-statement or broken: never reused. Other errors (a
# MatrixError raised while reading) leave it as it was.
CONNECTION_SUSPECT = (asyncio.CancelledError, sa.exc.DBAPIError, OSError, TimeoutError)


class PostgresBackend:
    """The two pools of one PostgreSQL database, and the pinned reads of each task.

    A fixed number of connections, none opened on demand: opening one (and preparing its
    statements again) under load costs more than waiting for one. Twice as many autocommit
    connections as transaction ones: a burst of syncs (a message to a big room) waits for
    one rather than opening connections, preparing their statements again and closing them.
    """

    def __init__(
        self, url: str, pool_size: int, pool_timeout_s: float, plans: dict[Any, Plan | None]
    ) -> None:
        self._plans = plans
        self.pool_size = pool_size
        self.pool_timeout_s = pool_timeout_s
        self.engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_pre_ping=False,
            pool_timeout=pool_timeout_s,
        )
        self._reader = create_async_engine(
            url,
            pool_size=2 * pool_size,
            max_overflow=0,
            pool_pre_ping=False,
            isolation_level="AUTOCOMMIT",
            pool_reset_on_return=None,
        )
        self.autocommit = AutocommitPool(self._reader, 2 * pool_size, plans, pool_timeout_s)
        # The read connection that pinned_reads() holds for the current task, if any.
        self._pinned: ContextVar[Pin | None] = ContextVar(f"pinned-{id(self)}", default=None)

    @property
    def dialect(self) -> Dialect:
        return self.engine.dialect

    def pool_use(self) -> list[tuple[str, int, int]]:
        """(pool, connections in use, pool size) of both pools, for the metrics."""
        pool = self.engine.sync_engine.pool
        writing = pool.checkedout() if isinstance(pool, sa.QueuePool) else 0
        return [
            ("write", writing, self.pool_size),
            ("read", self.autocommit.in_use, self.autocommit.size),
        ]

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        # A pinned read's connection goes back first: a task holding one connection while
        # it waits for another can leave every connection so held.
        await before_waiting("a write connection")
        task = current_task()
        try:
            async with self.engine.begin() as conn:
                hold(task)
                try:
                    yield PgConnection(conn, self._plans)
                finally:
                    drop(task)
        except sa.exc.TimeoutError:  # SQLAlchemy's pool: no connection within its timeout
            raise exhausted(
                f"all {self.pool_size} write connections stayed in use for {self.pool_timeout_s} s",
                max(1.0, self.pool_timeout_s / 2),
            ) from None

    async def write_alone(
        self, statement: Executable, parameters: Params = None
    ) -> CursorResult[*tuple[Any, ...]]:
        async with self.autocommit.connection() as pg:
            return await pg.execute(statement, parameters)

    @asynccontextmanager
    async def pinned_reads(self) -> AsyncIterator[None]:
        outer = self._pinned.get()
        if outer is not None and outer.owner is current_task():
            yield
            return
        pin = Pin(self.autocommit)
        token = self._pinned.set(pin)
        error: BaseException | None = None
        try:
            yield
        except BaseException as raised:
            error = raised
            raise
        finally:
            self._pinned.reset(token)
            await pin.give_back(error)

    def read(self) -> AbstractAsyncContextManager[Connection]:
        pinned = self._pinned.get()
        if pinned is not None and pinned.owner is current_task():
            return pinned
        return self.autocommit.connection()

    async def prepare(self, sqls: list[str]) -> None:
        """Opens every pooled connection and has it prepare ``sqls`` (a first use of a
        connection costs a connect and a round trip per statement)."""
        writers = [
            PgConnection(await self.engine.connect(), self._plans) for _ in range(self.pool_size)
        ]
        readers = [await self.autocommit.acquire() for _ in range(self.autocommit.size)]
        try:
            for conn in writers + readers:
                adapter = await conn.adapter()
                for sql in sqls:
                    await asyncpg_prepare(adapter, sql, self.dialect)
        finally:
            for conn in writers:
                await conn.close()  # back to the pool, open and prepared
            for conn in readers:
                await self.autocommit.release(conn, None)

    async def close(self) -> None:
        await self.autocommit.close()
        await self._reader.dispose()
        await self.engine.dispose()
