"""The database handle: engines, transactions, dialect differences and stream positions.

Everything that differs between SQLite and PostgreSQL lives here and nowhere else.
"""

from __future__ import annotations

import asyncio
import keyword
import re
import sqlite3
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar, TypeVarTuple, cast, overload

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import TypedReturnsRows

from homeserver.core.streams import Stream
from homeserver.storage.schema import stream_positions

T = TypeVar("T")
S = TypeVar("S", bound=Executable)
Ts = TypeVarTuple("Ts")


Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


class Connection(Protocol):
    """What storage code uses of a connection: ``await conn.execute(statement, params)``.

    On PostgreSQL it is a ``PgConnection``; on SQLite a ``SqliteConnection``. Each is also
    an async context manager of itself.
    """

    async def __aenter__(self) -> Connection: ...

    async def __aexit__(self, *_: object) -> None: ...

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*Ts], parameters: Params = None
    ) -> CursorResult[*Ts]: ...

    @overload
    async def execute(
        self, statement: Executable, parameters: Params = None
    ) -> CursorResult[*tuple[Any, ...]]: ...


def prepared(statement: S, columns: Sequence[str] | None = None, dialect: str | None = None) -> S:
    """Marks a statement built once (at import, or cached for good) with bound parameters.

    It then runs on the lean path: compiled once per dialect, executed on the driver's own
    cursor (SQLite) or asyncpg prepared statement (PostgreSQL), rows as named tuples.
    SQLAlchemy's execution machinery (cache key, compiled cache, execution context, result
    metadata; on PostgreSQL also a greenlet hand-off) costs ~50 to 100 µs per statement,
    several times what an indexed SQLite statement costs.

    An INSERT or UPDATE is compiled for the parameter names it is run with; ``columns``, the
    names it is always run with, lets start-up compile (and prepare) it ahead of use.
    ``dialect``: the one database kind it is written for (start-up leaves it alone on others).
    """
    _PREPARED[id(statement)] = statement  # kept alive, so the id stays its own
    if columns is not None:
        _DML_COLUMNS[id(statement)] = frozenset(columns)
    if dialect is not None:
        _DIALECT_ONLY[id(statement)] = dialect
    return statement


_PREPARED: dict[int, Executable] = {}
_DML_COLUMNS: dict[int, frozenset[str]] = {}
_DIALECT_ONLY: dict[int, str] = {}


class LeanRow(tuple[Any, ...]):
    """Base of the lean path's row classes: attribute, index and ``_mapping`` access, as
    SQLAlchemy's ``Row``."""

    __slots__ = ()
    _fields: tuple[str, ...]

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))


class LeanResult:
    """The part of ``CursorResult`` that storage code uses, over rows already fetched."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    fetchall = all

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return self.first()

    def one(self) -> Any:
        if not self._rows:
            raise NoResultFound("No row was found when one was required")
        return self.one_or_none()

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]

    def scalars(self) -> LeanResult:
        """The first column's values, as ``all()``, ``first()``, ``one()`` and iteration."""
        return LeanResult([r[0] for r in self._rows], self.rowcount)


_PLACEHOLDER = re.compile(r"\$(\d+)|__\[POSTCOMPILE_(\w+)\]")
_EXPANDED = re.compile(r"()__\[POSTCOMPILE_(\w+)\]")  # no number: the same two groups


class _Plan:
    """A prepared statement compiled for one dialect: its SQL, where each bound value goes,
    and how values are converted on the way in and out.

    SQLite's placeholders are ``?``; PostgreSQL's (asyncpg) are ``$n``, numbered in order of
    first use, so a list expanded in the middle renumbers the ones after it.
    """

    __slots__ = (
        "converters",
        "defaults",
        "dollar_names",
        "expanding",
        "order",
        "parts",
        "processors",
        "required",
        "row",
        "slots",
        "sql",
    )

    def __init__(
        self,
        sql: str,
        order: tuple[str, ...],
        defaults: dict[str, Any],
        required: frozenset[str],
        processors: dict[str, Callable[[Any], Any]],
        expanding: frozenset[str],
        row: type[LeanRow] | None,
        converters: tuple[Callable[[Any], Any] | None, ...] | None,
        numbered: bool,
    ) -> None:
        self.sql = sql
        self.order = order
        self.defaults = defaults
        self.required = required
        self.processors = processors
        self.expanding = expanding
        self.row = row
        self.converters = converters
        # Numbered placeholders: $n is the n-th name of ``order`` that is not expanded; the
        # SQL split into text, $n (an int) and lists to expand (their name in a 1-tuple).
        self.dollar_names = tuple(n for n in order if n not in expanding) if numbered else None
        # (SQLite's ``?`` need no renumbering: only the lists are split out there.)
        self.parts: list[str | int | tuple[str]] | None = None
        if expanding:
            self.parts = []
            last = 0
            for match in (_PLACEHOLDER if numbered else _EXPANDED).finditer(sql):
                self.parts.append(sql[last : match.start()])
                number, name = match.groups()
                self.parts.append(int(number) if number else (name,))
                last = match.end()
            self.parts.append(sql[last:])
        # Without lists to expand, each value in order: its name, converter and default.
        self.slots = (
            None
            if expanding
            else tuple(
                (name, processors.get(name), defaults.get(name))
                for name in (self.dollar_names if self.dollar_names is not None else order)
            )
        )

    @classmethod
    def compile(
        cls, statement: Executable, dialect: Dialect, columns: Sequence[str]
    ) -> _Plan | None:
        """None for what the lean path does not handle (SQLAlchemy runs those). An INSERT or
        UPDATE is compiled for the ``columns`` given, as SQLAlchemy does."""
        if dialect.paramstyle not in ("qmark", "numeric_dollar"):
            return None
        compiled: Any = cast(sa.ClauseElement, statement).compile(
            dialect=dialect, column_keys=list(columns)
        )
        names = compiled.bind_names
        if (
            compiled.literal_execute_params
            or compiled.insert_prefetch
            or compiled.update_prefetch
            or any(not b.expanding for b in compiled.post_compile_params)
        ):
            return None  # defaults computed in Python, values rendered into the SQL
        keys = [entry.keyname for entry in compiled._result_columns]
        if len(set(keys)) != len(keys) or not all(
            k.isidentifier() and not k.startswith("_") and not keyword.iskeyword(k) for k in keys
        ):
            return None
        row: type[LeanRow] | None = None
        converters = None
        if keys:
            base = namedtuple("Row", keys)  # type: ignore[misc]  # noqa: PYI024
            row = type("Row", (base, LeanRow), {"__slots__": ()})
            found = tuple(
                entry.type._cached_result_processor(dialect, None)
                for entry in compiled._result_columns
            )
            converters = found if any(found) else None
        return cls(
            compiled.string,
            tuple(compiled.positiontup),
            compiled.construct_params(_check=False),
            frozenset(name for b, name in names.items() if b.required),
            dict(compiled._bind_processors),
            frozenset(names[b] for b in compiled.post_compile_params),
            row,
            converters,
            numbered=dialect.paramstyle == "numeric_dollar",
        )

    def arguments(self, params: Mapping[str, Any] | None) -> tuple[str, list[Any]] | None:
        """The SQL and its positional values; None when a value is missing (SQLAlchemy says
        which), or a list to expand is empty or holds tuples (SQLAlchemy renders those)."""
        if params is None or not self.required <= params.keys():
            if self.required:
                return None
            params = {}
        if self.slots is not None:  # the common case, without building a merged dict
            get = params.get
            return self.sql, [
                get(name, default) if process is None else process(get(name, default))
                for name, process, default in self.slots
            ]
        merged = {**self.defaults, **params}
        lists: dict[str, list[Any]] = {}
        for name in self.expanding:
            value = merged[name]
            if not value or any(isinstance(v, tuple) for v in value):
                return None
            process = self.processors.get(name)
            lists[name] = [process(v) for v in value] if process else list(value)
        if self.dollar_names is not None:
            return self._numbered(merged, lists)
        assert self.parts is not None
        values: list[Any] = []
        for name in self.order:
            if name in lists:
                values += lists[name]
            else:
                values.append(self._value(merged, name))
        return "".join(
            part if isinstance(part, str) else ", ".join("?" * len(lists[part[0]]))
            for part in self.parts
            if not isinstance(part, int)
        ), values

    def _numbered(
        self, merged: dict[str, Any], lists: dict[str, list[Any]]
    ) -> tuple[str, list[Any]]:
        assert self.dollar_names is not None and self.parts is not None
        out: list[str] = []
        values: list[Any] = []
        renumbered: dict[int, int] = {}
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, int):
                if part not in renumbered:
                    values.append(self._value(merged, self.dollar_names[part - 1]))
                    renumbered[part] = len(values)
                out.append(f"${renumbered[part]}")
            else:
                first = len(values) + 1
                values += lists[part[0]]
                out.append(", ".join(f"${i}" for i in range(first, len(values) + 1)))
        return "".join(out), values

    def _value(self, merged: dict[str, Any], name: str) -> Any:
        process = self.processors.get(name)
        return process(merged[name]) if process else merged[name]

    def _rows(self, raw: Sequence[Any]) -> list[Any]:
        row, converters = self.row, self.converters
        if row is None or not raw:
            return []
        if converters is None:
            return list(map(row._make, raw))  # type: ignore[attr-defined]
        return [
            row._make(  # type: ignore[attr-defined]
                [v if c is None else c(v) for c, v in zip(converters, r, strict=True)]
            )
            for r in raw
        ]

    def run(
        self,
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
        return LeanResult(self._rows(raw), rowcount)

    async def run_pg(
        self, adapter: Any, sql: str, values: list[Any], dialect: Dialect, many: bool = False
    ) -> LeanResult:
        """On SQLAlchemy's asyncpg connection adapter, as its cursor does it: the same lock,
        transaction (begun on first use, unless autocommit) and prepared-statement cache."""
        async with adapter._execute_mutex:
            try:
                if adapter._transaction is None:
                    await adapter._start_transaction()
                schema_asof = dialect._invalidate_schema_cache_asof  # type: ignore[attr-defined]
                prepared_statement, _ = await adapter._prepare(sql, schema_asof)
                if many:  # one round trip for all the rows; no count, as SQLAlchemy's
                    await prepared_statement.executemany(values)
                    return LeanResult([], -1)
                raw = await prepared_statement.fetch(*values)
                status = prepared_statement.get_statusmsg()
            except Exception as error:
                dbapi_error = dialect.loaded_dbapi.Error
                try:
                    adapter._handle_exception(error)  # raises the driver's DB-API error
                except dbapi_error as translated:
                    raise DBAPIError.instance(
                        sql, values, translated, dbapi_error, dialect=dialect
                    ) from error
                raise
        counted = _STATUS_COUNT.match(status or "")
        return LeanResult(self._rows(raw), int(counted.group(1)) if counted else -1)


_STATUS_COUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|INSERT \d+) (\d+)")


class SqliteConnection:
    """A synchronous SQLAlchemy connection behind the awaitable ``execute`` storage uses.

    SQLite statements run on the event-loop thread: an indexed read or a write before the
    commit takes tens of microseconds, far less than handing it to a thread and back (what
    aiosqlite does for every statement, several times over). Only the steps that may wait
    on the disk or on another process's lock (BEGIN IMMEDIATE, COMMIT with its fsync) go to
    the writer's own thread. ``prepared`` statements skip SQLAlchemy's execution machinery.
    """

    __slots__ = ("_conn", "_plans")

    def __init__(self, conn: sa.Connection, plans: dict[Any, _Plan | None]) -> None:
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
        lean = _lean(self._plans, statement, parameters, self._conn.dialect)
        if lean is None:
            return self._conn.execute(statement, parameters)
        plan, sql, values, many = lean
        dbapi_conn = self._conn.connection.dbapi_connection
        assert dbapi_conn is not None
        result = plan.run(
            cast(sqlite3.Connection, dbapi_conn), sql, values, self._conn.dialect, many
        )
        # The subset of CursorResult that storage code uses (LeanResult).
        return cast("CursorResult[*tuple[Any, ...]]", result)


class PgConnection:
    """SQLAlchemy's ``AsyncConnection`` behind ``execute``; ``prepared`` statements skip
    SQLAlchemy's execution machinery and its greenlet hand-off (~100 µs of CPU each) and go
    to asyncpg through SQLAlchemy's own connection adapter."""

    __slots__ = ("_adapter", "_conn", "_plans")

    def __init__(self, conn: AsyncConnection, plans: dict[Any, _Plan | None]) -> None:
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
        lean = _lean(self._plans, statement, parameters, dialect)
        if lean is None:
            return await self._conn.execute(statement, parameters)
        plan, sql, values, many = lean
        adapter = self._adapter if self._adapter is not None else await self.adapter()
        result = await plan.run_pg(adapter, sql, values, dialect, many)
        return cast("CursorResult[*tuple[Any, ...]]", result)

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


def _lean(
    plans: dict[Any, _Plan | None], statement: Executable, parameters: Params, dialect: Dialect
) -> tuple[_Plan, str, list[Any], bool] | None:
    """The plan of a prepared statement, its SQL and values for these parameters, and
    whether they are many rows of values (an INSERT, UPDATE or DELETE without RETURNING, run
    once per row, as ``executemany``); None for SQLAlchemy to run it (not prepared, or not
    for the lean path)."""
    key: Any = id(statement)
    if key not in _PREPARED:
        return None
    rows: Sequence[Mapping[str, Any]] | None = None
    if parameters is None or isinstance(parameters, Mapping):
        columns: Mapping[str, Any] = parameters or {}
    elif (
        isinstance(statement, UpdateBase)
        and isinstance(parameters, list)
        and parameters
        and all(isinstance(r, Mapping) and r.keys() == parameters[0].keys() for r in parameters)
    ):
        rows = parameters
        columns = rows[0]
    else:
        return None
    dml = isinstance(statement, UpdateBase)
    if dml:  # compiled for the columns it is given
        key = (key, frozenset(columns))
    plan = plans.get(key, _UNPLANNED)
    if plan is _UNPLANNED:
        # (The columns would apply to the INSERTs of a SELECT's CTEs too.)
        plan = plans[key] = _Plan.compile(statement, dialect, list(columns) if dml else ())
    if plan is None:
        return None
    if rows is None:
        found = plan.arguments(cast("Mapping[str, Any] | None", parameters))
        return None if found is None else (plan, found[0], found[1], False)
    if plan.row is not None:
        return None  # RETURNING rows of several executions: SQLAlchemy's business
    sql = ""
    values: list[Any] = []
    for row in rows:
        found = plan.arguments(row)
        if found is None:
            return None
        sql = found[0]
        values.append(found[1])
    return plan, sql, values, True


_UNPLANNED: Any = object()


async def _until_done(future: asyncio.Future[Any]) -> bool:
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


class _AutocommitPool:
    """PostgreSQL's autocommit connections (reads, and ``Database.write_alone``), kept
    checked out of SQLAlchemy's pool between uses.

    Checking a connection out of SQLAlchemy's async engine and back costs three greenlet
    hand-offs and the pool's bookkeeping (~60 µs of CPU), and every woken sync takes two.
    Here a read takes an idle connection off a list and puts it back. A connection whose
    user failed on the database or was cancelled is invalidated and given back to
    SQLAlchemy, which discards it; its place is opened again by the next read that needs it.
    ``None`` in the list is such a free place.
    """

    def __init__(self, engine: AsyncEngine, size: int, plans: dict[Any, _Plan | None]) -> None:
        self._engine = engine
        self._plans = plans
        self.size = size
        self._idle: asyncio.LifoQueue[PgConnection | None] = asyncio.LifoQueue()
        for _ in range(size):
            self._idle.put_nowait(None)

    async def acquire(self) -> PgConnection:
        try:  # the most recently used, whose caches are warm
            item = self._idle.get_nowait()
        except asyncio.QueueEmpty:
            try:
                async with asyncio.timeout(READ_POOL_TIMEOUT_S):
                    item = await self._idle.get()
            except TimeoutError:
                raise sa.exc.TimeoutError(
                    f"All {self.size} read connections stayed in use for {READ_POOL_TIMEOUT_S} s"
                ) from None
        if item is None:
            try:
                item = PgConnection(await self._engine.connect(), self._plans)
                await item.adapter()
            except BaseException:
                self._idle.put_nowait(None)
                raise
        return item

    async def release(self, item: PgConnection, error: BaseException | None) -> None:
        if error is None or not isinstance(error, _CONNECTION_SUSPECT):
            self._idle.put_nowait(item)
            return
        try:
            await item.discard()
        finally:
            self._idle.put_nowait(None)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PgConnection]:
        item = await self.acquire()
        try:
            yield item
        except BaseException as error:
            await self.release(item, error)
            raise
        await self.release(item, None)

    async def close(self) -> None:
        """Gives the idle connections back to SQLAlchemy (at shut-down)."""
        while not self._idle.empty():
            item = self._idle.get_nowait()
            if item is not None:
                await item.close()


class _Pin:
    """The read connection ``pinned_reads`` holds for a task, checked out by its first read
    (a read is ``async with``; the connection stays checked out until the pin ends)."""

    __slots__ = ("_pool", "conn", "error")

    def __init__(self, pool: _AutocommitPool) -> None:
        self._pool = pool
        self.conn: PgConnection | None = None
        self.error: BaseException | None = None  # of a read, for the release

    async def __aenter__(self) -> Connection:
        if self.conn is None:
            conn = await self._pool.acquire()
            if self.conn is None:
                self.conn = conn
            else:  # another task of the pin's got one meanwhile
                await self._pool.release(conn, None)
        return self.conn

    async def __aexit__(self, _type: object, error: BaseException | None, _tb: object) -> None:
        if error is not None and isinstance(error, _CONNECTION_SUSPECT):
            self.error = error


# How long a read waits for a connection when all are in use (SQLAlchemy's default).
READ_POOL_TIMEOUT_S = 30.0

# After these a connection may be mid-statement or broken: never reused. Other errors (a
# MatrixError raised while reading) leave it as it was.
_CONNECTION_SUSPECT = (asyncio.CancelledError, sa.exc.DBAPIError, OSError, TimeoutError)


class Database:
    """One database: ``write()`` yields a connection in one transaction, ``read()`` an
    autocommit one (each statement sees one consistent snapshot; no BEGIN/ROLLBACK).

    On SQLite there is one writer connection behind an asyncio lock, and the writer starts
    with ``BEGIN IMMEDIATE`` so that a write never fails half-way on a lock upgrade; reads
    go to one WAL reader. Group commit: bodies that queued for the writer while another ran
    join its transaction, each in a savepoint (a failed body undoes only itself), and all are
    committed by one COMMIT, so by one fsync; ``write()`` returns once that COMMIT is done,
    so an acknowledged write is on disk as before. On PostgreSQL, two asyncpg pools:
    transactions and autocommit (its own commits share fsyncs already).
    """

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._async_engine: AsyncEngine | None = None
        # Lean-path plans of prepared statements, by statement (and columns, for DML).
        self._plans: dict[Any, _Plan | None] = {}
        self._ignoring: dict[tuple[str, tuple[str, ...]], sa.Insert] = {}
        # Statements built for this database's dialect, and the columns start-up compiles
        # them for (the ``columns`` of ``prepared``, which is for statements of any dialect).
        self._own_dml: dict[int, frozenset[str]] = {}
        if self.is_sqlite:
            sync_url = sa.make_url(url).set(drivername="sqlite")
            self._sqlite_writer = _sqlite_engine(sync_url, writer=True)
            self._sqlite_reader = _sqlite_engine(sync_url, writer=False)
            self._read_conn: SqliteConnection | None = None

            self._write_conn: sa.Connection | None = None
            # The writer's thread: BEGIN and COMMIT, one at a time, in order.
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            self._write_lock = asyncio.Lock()
            self._queued = 0  # bodies waiting for the writer lock
            self._group: _Group | None = None  # the open group transaction
        else:
            # A fixed number of connections, none opened on demand: opening one (and preparing
            # its statements again) under load cost more than waiting for one.
            self._pool_size = pool_size
            self._async_engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=0, pool_pre_ping=False
            )
            # Reads are autocommit: no BEGIN and ROLLBACK round trips around each one (read
            # committed gives every statement its own snapshot either way); so are the writes
            # of one statement (write_alone). Twice the connections: a burst of syncs (a
            # message to a big room) waits for one rather than opening connections,
            # preparing their statements again and closing them (that churn cost more CPU
            # than the reads themselves).
            self._pg_reader = create_async_engine(
                url,
                pool_size=2 * pool_size,
                max_overflow=0,
                pool_pre_ping=False,
                isolation_level="AUTOCOMMIT",
                pool_reset_on_return=None,
            )
            self._autocommit = _AutocommitPool(self._pg_reader, 2 * pool_size, self._plans)
        # The read connection that pinned_reads() holds for the current task, if any.
        self._pinned: ContextVar[_Pin | None] = ContextVar(f"pinned-{id(self)}", default=None)

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
                yield PgConnection(conn, self._plans)
            return
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
        if self.is_sqlite:
            async with self.write() as conn:
                return await conn.execute(statement, parameters)
        async with self._autocommit.connection() as pg:
            return await pg.execute(statement, parameters)

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
            self._write_conn = await self._in_writer_thread(self._sqlite_writer.connect)
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
        cancelled = await _until_done(future)
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

    async def prepare_statements(self) -> None:
        """At start-up rather than in the first requests: compiles the lean plans of every
        prepared read, and of every INSERT or UPDATE whose columns are known (~0.5 ms each,
        a few dozen in a first send and sync), and on PostgreSQL opens every pooled
        connection and has it prepare them (a first use of a connection costs a connect and
        a round trip per statement)."""
        dialect = self._sqlite_reader.dialect if self.is_sqlite else self.engine.dialect
        for key, statement in list(_PREPARED.items()):
            if _DIALECT_ONLY.get(key, dialect.name) != dialect.name:
                continue
            if not isinstance(statement, UpdateBase):
                if key not in self._plans:
                    self._plans[key] = _Plan.compile(statement, dialect, ())
            elif key in _DML_COLUMNS or key in self._own_dml:
                columns = _DML_COLUMNS.get(key) or self._own_dml[key]
                if (key, columns) not in self._plans:
                    self._plans[(key, columns)] = _Plan.compile(statement, dialect, sorted(columns))
        if self.is_sqlite:
            return
        fixed = [
            plan.sql for plan in self._plans.values() if plan is not None and plan.parts is None
        ]
        schema_asof = cast(Any, dialect)._invalidate_schema_cache_asof
        writers = [
            PgConnection(await self.engine.connect(), self._plans) for _ in range(self._pool_size)
        ]
        readers = [await self._autocommit.acquire() for _ in range(self._autocommit.size)]
        try:
            for conn in writers + readers:
                adapter = await conn.adapter()
                for sql in fixed:
                    await adapter._prepare(sql, schema_asof)
        finally:
            for conn in writers:
                await conn.close()  # back to the pool, open and prepared
            for conn in readers:
                await self._autocommit.release(conn, None)

    async def _in_writer_thread(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on the writer's thread; a cancelled caller still waits for it to end,
        so the writer connection is never used by two threads at once."""
        future = asyncio.get_running_loop().run_in_executor(self._write_thread, fn)
        if await _until_done(future):
            raise asyncio.CancelledError
        return future.result()

    @asynccontextmanager
    async def pinned_reads(self) -> AsyncIterator[None]:
        """Every ``read()`` inside shares one connection: one pool checkout (about 0.3 ms of
        CPU on PostgreSQL) for a computation of many statements, such as a sync. It is
        checked out by the first read, if any: the syncs a message to a big room wakes find
        what they read kept by the first of them, and must not queue for connections they
        do not use. The code inside must not read from concurrent tasks (they would share
        the connection)."""
        if self.is_sqlite or self._pinned.get() is not None:
            yield
            return
        pin = _Pin(self._autocommit)
        token = self._pinned.set(pin)
        error: BaseException | None = None
        try:
            yield
        except BaseException as raised:
            error = raised
            raise
        finally:
            self._pinned.reset(token)
            if pin.conn is not None:
                await self._autocommit.release(pin.conn, pin.error or error)

    def read(self) -> AbstractAsyncContextManager[Connection]:
        """A connection for reads: SQLite's one reader, or the connection ``pinned_reads``
        holds, handed out as is (a generator-based context manager cost ~4 µs per read, a
        dozen reads per sync); else one from PostgreSQL's read pool."""
        if self.is_sqlite:
            if self._read_conn is None:
                self._read_conn = SqliteConnection(self._sqlite_reader.connect(), self._plans)
            return self._read_conn
        pinned = self._pinned.get()
        if pinned is not None:
            return pinned
        return self._autocommit.connection()

    async def close(self) -> None:
        if self.is_sqlite:
            group = self._group
            if group is not None and group.flusher is not None:
                await group.flusher  # commits what its bodies wrote
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
            await self._autocommit.close()
            await self._pg_reader.dispose()
        if self._async_engine is not None:
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


def _sqlite_engine(url: sa.URL, *, writer: bool) -> sa.Engine:
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
