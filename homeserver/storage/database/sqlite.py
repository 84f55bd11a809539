"""SQLite: one reader, one writer on a thread of its own, and group commit.

Statements run on the event-loop thread: an indexed read or a write before the commit takes
tens of microseconds, far less than handing it to a thread and back. Only the steps that may
wait on the disk or on another process's lock (BEGIN IMMEDIATE, COMMIT with its fsync) go to
the writer's thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast, overload

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

from homeserver.storage.database.prepared import (
    Connection,
    LeanResult,
    Params,
    Plan,
    Ts,
    lean,
)

T = TypeVar("T")


class SqliteConnection:
    """A synchronous SQLAlchemy connection behind the awaitable ``execute`` storage uses.

    SQLite statements run on the event-loop thread: an indexed read or a write before the
    commit takes tens of microseconds, far less than handing it to a thread and back (what
    aiosqlite does for every statement, several times over). Only the steps that may wait
    on the disk or on another process's lock (BEGIN IMMEDIATE, COMMIT with its fsync) go to
    the writer's own thread. ``prepared`` statements skip SQLAlchemy's execution machinery.
    """

    __slots__ = ("_conn", "_plans")

    def __init__(self, conn: sa.Connection, plans: dict[Any, Plan | None]) -> None:
        self._conn = conn
        self._plans = plans

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
        found = lean(self._plans, statement, parameters, self._conn.dialect)
        if found is None:
            return self._conn.execute(statement, parameters)
        plan, sql, values, many = found
        dbapi_conn = self._conn.connection.dbapi_connection
        assert dbapi_conn is not None
        result = _run(
            plan, cast(sqlite3.Connection, dbapi_conn), sql, values, self._conn.dialect, many
        )
        # The subset of CursorResult that storage code uses (LeanResult).
        return cast("CursorResult[*tuple[Any, ...]]", result)


def _run(
    plan: Plan,
    dbapi_conn: sqlite3.Connection,
    sql: str,
    values: list[Any],
    dialect: Dialect,
    many: bool = False,
) -> LeanResult:
    cursor = dbapi_conn.cursor()
    try:
        if many:
            cursor.executemany(sql, values)
        else:
            cursor.execute(sql, values)
        raw = cursor.fetchall() if cursor.description is not None else []
        rowcount = cursor.rowcount
    except sqlite3.Error as err:
        raise DBAPIError.instance(sql, values, err, sqlite3.Error, dialect=dialect) from err
    finally:
        cursor.close()
    return LeanResult(plan.rows(raw), rowcount)


async def until_done(future: asyncio.Future[Any]) -> bool:
    """Waits for the writer thread's ``future`` however often the caller is cancelled
    meanwhile (work on a thread cannot be stopped half-way); whether it was cancelled."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:
            break  # done, with an error for the caller to read
    return cancelled


# Bodies sharing one SQLite transaction at most: bounds how long the first one waits.
MAX_GROUP_MEMBERS = 64
# A body leaves its transaction open only for at least this many bodies queued: it then
# waits for them to run, behind whatever else the event loop has ready, while its own COMMIT
# would have overlapped that work on the writer's thread. Worth it under a queue, not for
# the odd collision.
GROUP_WHEN_QUEUED = 2


class _Group:
    """Bodies of ``Database.write()`` that ran one after another in one SQLite transaction,
    each inside its own savepoint, and are committed together (one fsync for all)."""

    __slots__ = ("committed", "flusher", "members", "transaction")

    def __init__(self, transaction: sa.RootTransaction) -> None:
        self.transaction = transaction
        self.members = 0
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.flusher: asyncio.Task[None] | None = None

    def fail(self, error: BaseException) -> None:
        if not self.committed.done():
            self.committed.set_exception(error)
            self.committed.exception()  # retrieved: members that left early do not care


class SqliteBackend:
    """The SQLite file: its WAL reader, and its writer behind an asyncio lock, which starts
    with ``BEGIN IMMEDIATE`` so that a write never fails half-way on a lock upgrade.

    Group commit: bodies of ``write()`` that queued for the writer while another ran join
    its transaction, each in a savepoint (a failed body undoes only itself), and all are
    committed by one COMMIT, so by one fsync; ``write()`` returns once that COMMIT is done,
    so an acknowledged write is on disk.
    """

    def __init__(self, url: str, plans: dict[Any, Plan | None]) -> None:
        self._plans = plans
        sync_url = sa.make_url(url).set(drivername="sqlite")
        self.writer_engine = sqlite_engine(sync_url, writer=True)
        self.reader_engine = sqlite_engine(sync_url, writer=False)
        self._read_conn: SqliteConnection | None = None
        self._write_conn: sa.Connection | None = None
        # The writer's thread: BEGIN and COMMIT, one at a time, in order.
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._write_lock = asyncio.Lock()
        self._queued = 0  # bodies waiting for the writer lock
        self._group: _Group | None = None  # the open group transaction

    @property
    def dialect(self) -> Dialect:
        return self.reader_engine.dialect

    def read(self) -> SqliteConnection:
        """The one reader, handed out as is (a connection is its own context manager)."""
        if self._read_conn is None:
            self._read_conn = SqliteConnection(self.reader_engine.connect(), self._plans)
        return self._read_conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        await self._take_writer()
        try:
            group = await self._open_group()
            writer = self._write_conn
            assert writer is not None
            raw = writer.connection.dbapi_connection
            assert raw is not None
            self._savepoint(group, raw, "SAVEPOINT body")
            try:
                yield SqliteConnection(writer, self._plans)
            except BaseException:
                # This body leaves nothing behind; the others of the group are unaffected.
                self._savepoint(group, raw, "ROLLBACK TO body", "RELEASE body")
                await self._settle(group)
                raise
            self._savepoint(group, raw, "RELEASE body")
            group.members += 1
            await self._settle(group)
        finally:
            self._write_lock.release()
        # Acknowledged once the group's COMMIT is on disk (its error is this body's too).
        await asyncio.shield(group.committed)

    async def _take_writer(self) -> None:
        """The writer lock, counted while waited for (a body that sees others waiting leaves
        the group's transaction open for them)."""
        self._queued += 1
        try:
            await self._write_lock.acquire()
        finally:
            self._queued -= 1

    async def _open_group(self) -> _Group:
        """The open group transaction, or a new one (BEGIN IMMEDIATE)."""
        if self._group is not None:
            return self._group
        if self._write_conn is None:
            self._write_conn = await self._in_writer_thread(self.writer_engine.connect)
        writer = self._write_conn
        try:
            transaction = await self._in_writer_thread(writer.begin)
        except BaseException:
            self._rollback_writer()
            raise
        self._group = _Group(transaction)
        return self._group

    def _savepoint(self, group: _Group, raw: Any, *statements: str) -> None:
        """A savepoint step of a body; if SQLite fails it (the transaction is gone: an I/O
        error, a full disk), the whole group fails and the writer is ready for the next."""
        statement = ""
        try:
            for statement in statements:
                raw.execute(statement)
        except sqlite3.Error as error:
            if self._group is group:
                self._group = None
                self._rollback_writer()
            translated = DBAPIError.instance(statement, None, error, sqlite3.Error)
            group.fail(translated)
            raise translated from error

    async def _settle(self, group: _Group) -> None:
        """After a body, holding the writer: commit the group now, or, with a queue, leave it
        open for the bodies waiting for the writer (they run first; a flusher queued behind
        them commits what they add, so that no body waits on one that never comes)."""
        if self._group is not group:
            return  # already ended (failed)
        waiting = self._queued - (group.flusher is not None)  # its flusher waits too
        if (
            (group.flusher is not None or waiting >= GROUP_WHEN_QUEUED)
            and waiting > 0
            and group.members < MAX_GROUP_MEMBERS
        ):
            if group.flusher is None:
                group.flusher = asyncio.create_task(self._flush(group))
            return
        await self._end_group(group)

    async def _flush(self, group: _Group) -> None:
        await self._take_writer()
        try:
            if self._group is group:
                await self._end_group(group)
        finally:
            self._write_lock.release()

    async def _end_group(self, group: _Group) -> None:
        """COMMIT (or, with no body to keep, ROLLBACK) the group's transaction; its outcome
        goes to every member. A cancelled caller still waits for the COMMIT to end."""
        self._group = None
        if not group.members:
            self._rollback_writer()
            group.committed.set_result(None)
            return
        future = asyncio.get_running_loop().run_in_executor(
            self._write_thread, group.transaction.commit
        )
        cancelled = await until_done(future)
        error = future.exception()
        if error is None:
            group.committed.set_result(None)
        else:
            # A failed COMMIT (a deferred constraint, a full disk) leaves nothing half-done
            # and the connection ready for the next transaction.
            self._rollback_writer()
            group.fail(error)
        if cancelled:
            raise asyncio.CancelledError

    def _rollback_writer(self) -> None:
        writer = self._write_conn
        if writer is None:
            return
        if writer.get_transaction() is not None:  # active, or failed to commit
            writer.rollback()
        # SQLite keeps a transaction whose COMMIT failed open; so does its driver.
        raw = writer.connection.dbapi_connection
        if raw is not None and raw.in_transaction:
            raw.rollback()

    async def _in_writer_thread(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on the writer's thread; a cancelled caller still waits for it to end,
        so the writer connection is never used by two threads at once."""
        future = asyncio.get_running_loop().run_in_executor(self._write_thread, fn)
        if await until_done(future):
            raise asyncio.CancelledError
        return future.result()

    async def close(self) -> None:
        group = self._group
        if group is not None and group.flusher is not None:
            await group.flusher  # commits what its bodies wrote
        if self._write_conn is not None:
            await self._in_writer_thread(self._write_conn.close)
            self._write_conn = None
        if self._read_conn is not None:
            self._read_conn._conn.close()
            self._read_conn = None
        self.writer_engine.dispose()
        self.reader_engine.dispose()
        self._write_thread.shutdown(wait=True)


def sqlite_engine(url: sa.URL, *, writer: bool) -> sa.Engine:
    """The writer begins with BEGIN IMMEDIATE; the reader never begins (autocommit)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN itself (pysqlite's own transaction
        # handling would defer it and break BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=10000")
        if writer:
            # WAL is kept in the file: the writer sets it. Were the reader to set it too, two
            # connections opening a new file at once would both want it exclusively, and
            # SQLite fails one at once ("database is locked") rather than have it wait.
            cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss, not only a crash; "acknowledged is never lost".
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if writer:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Take the write lock at once, so a write never fails half-way on an upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
