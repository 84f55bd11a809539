"""The storage tests' database: migrated, on both kinds (``db_url``), closed after."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from homeserver.storage.database import Database
from homeserver.storage.migrate import upgrade_head


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await upgrade_head(database.engine)
    try:
        yield database
    finally:
        await database.close()
