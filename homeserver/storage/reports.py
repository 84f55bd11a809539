"""Reports of rooms, events and users, kept for the server's administrators."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import content_reports


class ReportStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_report(
        self,
        reporter: str,
        now_ms: int,
        *,
        room_id: str | None = None,
        event_id: str | None = None,
        user_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        await self._db.write_alone(
            sa.insert(content_reports).values(
                reporter=reporter,
                room_id=room_id,
                event_id=event_id,
                user_id=user_id,
                reason=reason,
                created_ts=now_ms,
            )
        )

    async def count_reports(self) -> int:
        async with self._db.read() as conn:
            return int(
                (
                    await conn.execute(sa.select(sa.func.count()).select_from(content_reports))
                ).scalar_one()
            )
