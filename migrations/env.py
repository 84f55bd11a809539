"""Alembic environment: one schema for SQLite and PostgreSQL, run on the async engine."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from homeserver.storage.schema import metadata
from homeserver.storage.schema.search import include_name

config = context.config


def _url() -> str:
    # homeserver.storage.migrate passes the URL through the Alembic config; the CLI's
    # `alembic revision --autogenerate` takes it from HS_DATABASE__URL.
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("HS_DATABASE__URL")
    if not url:
        raise RuntimeError("set HS_DATABASE__URL to run alembic directly")
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())
