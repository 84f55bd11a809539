"""Prepared statements: built once, compiled once per dialect, run on the lean path.

A statement marked with ``prepared`` skips SQLAlchemy's execution machinery: it is compiled
once per dialect into a ``Plan`` (its SQL, where each value goes, the converters on the way
in and out), run on the driver's own cursor (SQLite) or asyncpg prepared statement
(PostgreSQL), and its rows come back as named tuples. What it takes from SQLAlchemy's
compiler comes through ``internals``.
"""

from __future__ import annotations

import keyword
import re
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, TypeVarTuple, cast, overload

from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import TypedReturnsRows

from homeserver.storage.database.internals import compile_statement

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
    metadata; on PostgreSQL also a greenlet hand-off) costs several times what an indexed
    SQLite statement costs.

    An INSERT or UPDATE is compiled for the parameter names it is run with; ``columns``, the
    names it is always run with, lets start-up compile (and prepare) it ahead of use.
    ``dialect``: the one database kind it is written for (start-up leaves it alone on others).
    """
    PREPARED[id(statement)] = statement  # kept alive, so the id stays its own
    if columns is not None:
        DML_COLUMNS[id(statement)] = frozenset(columns)
    if dialect is not None:
        DIALECT_ONLY[id(statement)] = dialect
    return statement


PREPARED: dict[int, Executable] = {}
DML_COLUMNS: dict[int, frozenset[str]] = {}
DIALECT_ONLY: dict[int, str] = {}


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


class Plan:
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
    ) -> Plan | None:
        """None for what the lean path does not handle (SQLAlchemy runs those). An INSERT or
        UPDATE is compiled for the ``columns`` given, as SQLAlchemy does."""
        if dialect.paramstyle not in ("qmark", "numeric_dollar"):
            return None
        compiled = compile_statement(statement, dialect, columns)
        if compiled is None:
            return None
        keys = compiled.keys
        if len(set(keys)) != len(keys) or not all(
            k.isidentifier() and not k.startswith("_") and not keyword.iskeyword(k) for k in keys
        ):
            return None
        row: type[LeanRow] | None = None
        converters = None
        if keys:
            base = namedtuple("Row", keys)  # type: ignore[misc]  # noqa: PYI024
            row = type("Row", (base, LeanRow), {"__slots__": ()})
            converters = compiled.converters if any(compiled.converters) else None
        return cls(
            compiled.sql,
            compiled.order,
            compiled.defaults,
            compiled.required,
            compiled.processors,
            compiled.expanding,
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

    def rows(self, raw: Sequence[Any]) -> list[Any]:
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


def lean(
    plans: dict[Any, Plan | None], statement: Executable, parameters: Params, dialect: Dialect
) -> tuple[Plan, str, list[Any], bool] | None:
    """The plan of a prepared statement, its SQL and values for these parameters, and
    whether they are many rows of values (an INSERT, UPDATE or DELETE without RETURNING, run
    once per row, as ``executemany``); None for SQLAlchemy to run it (not prepared, or not
    for the lean path)."""
    key: Any = id(statement)
    if key not in PREPARED:
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
        plan = plans[key] = Plan.compile(statement, dialect, list(columns) if dml else ())
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
