"""The migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from homeserver.core.streams import Stream
from homeserver.storage.database import Database
from homeserver.storage.migrate import upgrade_head
from homeserver.storage.schema import BACKFILLED_EVENTS, UNSERVED_EVENTS, metadata, stream_positions
from homeserver.storage.schema.search import include_name


async def test_upgrade_head_matches_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        await upgrade_head(db.engine)
        await upgrade_head(db.engine)  # a second run is a no-op

        def diff(connection: sa.Connection) -> list[object]:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "include_name": include_name}
            )
            return list(compare_metadata(context, metadata))

        async with db.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
            rows = (await conn.execute(sa.select(stream_positions.c.stream))).scalars().all()
        assert set(rows) == {s.value for s in Stream} | {UNSERVED_EVENTS, BACKFILLED_EVENTS}
    finally:
        await db.close()
