"""Registration tokens kept in the database, with their use counts and expiry."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import registration_tokens


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None  # None: unlimited
    pending: int  # reserved by UIA sessions whose registration has not finished yet
    completed: int  # registrations that used it
    expiry_time: int | None  # ms since the epoch; None: never expires


def _usable(now_ms: int) -> sa.ColumnElement[bool]:
    t = registration_tokens.c
    return sa.and_(
        sa.or_(t.uses_allowed.is_(None), t.pending + t.completed < t.uses_allowed),
        sa.or_(t.expiry_time.is_(None), t.expiry_time > now_ms),
    )


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_token(
        self, token: str, uses_allowed: int | None, expiry_time: int | None
    ) -> bool:
        """False if the token already exists."""
        async with self._db.write() as conn:
            result = await conn.execute(
                self._db.insert_ignore(
                    registration_tokens,
                    {
                        "token": token,
                        "uses_allowed": uses_allowed,
                        "pending": 0,
                        "completed": 0,
                        "expiry_time": expiry_time,
                    },
                    keys=("token",),
                )
            )
        return result.rowcount > 0

    async def get_token(self, token: str) -> RegistrationToken | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(registration_tokens).where(registration_tokens.c.token == token)
                )
            ).first()
        if r is None:
            return None
        return RegistrationToken(r.token, r.uses_allowed, r.pending, r.completed, r.expiry_time)

    async def is_usable(self, token: str, now_ms: int) -> bool:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(registration_tokens.c.token).where(
                        registration_tokens.c.token == token, _usable(now_ms)
                    )
                )
            ).first()
        return r is not None

    async def any_usable(self, now_ms: int) -> bool:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(registration_tokens.c.token).where(_usable(now_ms)).limit(1)
                )
            ).first()
        return r is not None

    async def reserve(self, token: str, now_ms: int) -> bool:
        """Count one pending use if the token is still usable; False otherwise.

        One conditional UPDATE, so two sessions racing for the last use cannot both win.
        """
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(registration_tokens)
                .where(registration_tokens.c.token == token, _usable(now_ms))
                .values(pending=registration_tokens.c.pending + 1)
            )
        return result.rowcount > 0

    async def release(self, token: str) -> None:
        """Give back a pending use (its session expired without registering)."""
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(registration_tokens)
                .where(registration_tokens.c.token == token, registration_tokens.c.pending > 0)
                .values(pending=registration_tokens.c.pending - 1)
            )

    async def complete(self, token: str) -> None:
        """Turn a pending use into a completed one (the registration succeeded)."""
        t = registration_tokens.c
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(registration_tokens)
                .where(t.token == token)
                .values(
                    pending=sa.case((t.pending > 0, t.pending - 1), else_=0),
                    completed=t.completed + 1,
                )
            )

    async def delete_token(self, token: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.delete(registration_tokens).where(registration_tokens.c.token == token)
            )
        return result.rowcount > 0
