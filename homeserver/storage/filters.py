"""Filters uploaded by clients for /sync and /messages."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict
from homeserver.storage.database import Database
from homeserver.storage.schema import filters

_ATTEMPTS = 5


class FilterStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_filter(self, user_id: UserID, filter_json: JsonDict) -> int:
        """Store the filter under the user's next filter ID (0, 1, 2, ...) and return it."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self._db.write() as conn:
                    last = (
                        await conn.execute(
                            sa.select(sa.func.max(filters.c.filter_id)).where(
                                filters.c.user_id == user_id
                            )
                        )
                    ).scalar()
                    filter_id = 0 if last is None else int(last) + 1
                    await conn.execute(
                        sa.insert(filters).values(
                            user_id=user_id, filter_id=filter_id, filter_json=filter_json
                        )
                    )
                return filter_id
            except sa.exc.IntegrityError:
                # On PostgreSQL two uploads of one user may race for the same ID: the primary
                # key refuses the second, which takes the next ID.
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def get_filter(self, user_id: UserID, filter_id: int) -> JsonDict | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(filters.c.filter_json).where(
                        filters.c.user_id == user_id, filters.c.filter_id == filter_id
                    )
                )
            ).first()
        if row is None:
            return None
        value: JsonDict = row.filter_json
        return value
