"""User-interactive authentication sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import uia_sessions


@dataclass(frozen=True, slots=True)
class UiaSession:
    session_id: str
    created_ts: int
    completed: list[str]  # stage types done, in order
    params: dict[str, Any]  # what completed stages established (the user, a token)
    request_fingerprint: str  # the method and path the session was started for


def _session(r: Any) -> UiaSession:
    return UiaSession(
        r.session_id, r.created_ts, list(r.completed), dict(r.params), r.request_fingerprint
    )


class UiaStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_session(
        self, session_id: str, created_ts: int, fingerprint: str, params: dict[str, Any]
    ) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.insert(uia_sessions).values(
                    session_id=session_id,
                    created_ts=created_ts,
                    completed=[],
                    params=params,
                    request_fingerprint=fingerprint,
                )
            )

    async def get_session(self, session_id: str) -> UiaSession | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(uia_sessions).where(uia_sessions.c.session_id == session_id)
                )
            ).first()
        return None if r is None else _session(r)

    async def update_session(
        self, session_id: str, completed: list[str], params: dict[str, Any]
    ) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(uia_sessions)
                .where(uia_sessions.c.session_id == session_id)
                .values(completed=completed, params=params)
            )

    async def delete_session(self, session_id: str) -> UiaSession | None:
        async with self._db.write() as conn:
            r = (
                await conn.execute(
                    sa.delete(uia_sessions)
                    .where(uia_sessions.c.session_id == session_id)
                    .returning(*uia_sessions.c)
                )
            ).first()
        return None if r is None else _session(r)

    async def delete_sessions_before(self, created_before_ts: int) -> list[UiaSession]:
        """Delete the sessions created before the time; returns them (to release tokens)."""
        async with self._db.write() as conn:
            rows = (
                await conn.execute(
                    sa.delete(uia_sessions)
                    .where(uia_sessions.c.created_ts < created_before_ts)
                    .returning(*uia_sessions.c)
                )
            ).all()
        return [_session(r) for r in rows]
