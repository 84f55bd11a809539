"""The one place that reaches into SQLAlchemy's and asyncpg's private parts.

The lean path (``prepared``) runs statements without SQLAlchemy's per-statement machinery,
yet with what SQLAlchemy decided for them: the compiled SQL, the order of the bound values
and their converters, the result columns and theirs; and on PostgreSQL, the statement cache,
lock and transaction of SQLAlchemy's own asyncpg connection adapter. None of that is public
API. It is read here and only here, so that an upgrade of either library breaks one module,
and the tests' shadow check (``lean_reads_checked`` in tests/conftest.py: every lean read
run through SQLAlchemy as well, rows compared) shows at once whether it did.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

Converter = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Compiled:
    """A statement as SQLAlchemy compiled it for one dialect."""

    sql: str
    order: tuple[str, ...]  # the bound parameters' names, in placeholder order
    defaults: dict[str, Any]  # values bound in the statement itself
    required: frozenset[str]  # names the caller must give
    processors: dict[str, Converter]  # Python value -> driver value, by name
    expanding: frozenset[str]  # lists rendered as one placeholder per item (IN)
    keys: list[str]  # result column names
    converters: tuple[Converter | None, ...]  # driver value -> Python value, by column


def compile_statement(
    statement: Executable, dialect: Dialect, columns: Sequence[str]
) -> Compiled | None:
    """None for what needs SQLAlchemy at execution time: defaults computed in Python,
    values rendered into the SQL. An INSERT or UPDATE is compiled for ``columns``."""
    compiled: Any = cast(sa.ClauseElement, statement).compile(
        dialect=dialect, column_keys=list(columns)
    )
    if (
        compiled.literal_execute_params
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or any(not b.expanding for b in compiled.post_compile_params)
    ):
        return None
    names = compiled.bind_names
    return Compiled(
        sql=compiled.string,
        order=tuple(compiled.positiontup),
        defaults=compiled.construct_params(_check=False),
        required=frozenset(name for b, name in names.items() if b.required),
        processors=dict(compiled._bind_processors),
        expanding=frozenset(names[b] for b in compiled.post_compile_params),
        keys=[entry.keyname for entry in compiled._result_columns],
        converters=tuple(
            entry.type._cached_result_processor(dialect, None) for entry in compiled._result_columns
        ),
    )


_STATUS_COUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|INSERT \d+) (\d+)")


async def asyncpg_execute(
    adapter: Any, sql: str, values: list[Any], dialect: Dialect, many: bool
) -> tuple[Sequence[Any], int]:
    """Runs ``sql`` on SQLAlchemy's asyncpg connection adapter as its cursor does: under the
    same lock, in its transaction (begun on first use, unless autocommit), through its
    prepared-statement cache. The rows and the count of rows the status reports (-1: none,
    or ``many`` rows of values, run in one round trip, as SQLAlchemy does)."""
    async with adapter._execute_mutex:
        try:
            if adapter._transaction is None:
                await adapter._start_transaction()
            prepared_statement, _ = await adapter._prepare(sql, _schema_asof(dialect))
            if many:
                await prepared_statement.executemany(values)
                return [], -1
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
    return raw, int(counted.group(1)) if counted else -1


async def asyncpg_prepare(adapter: Any, sql: str, dialect: Dialect) -> None:
    """Has the adapter's connection prepare ``sql`` now, into its statement cache."""
    await adapter._prepare(sql, _schema_asof(dialect))


def _schema_asof(dialect: Dialect) -> Any:
    return cast(Any, dialect)._invalidate_schema_cache_asof
