"""OpenID tokens: who a third party's token names, until it expires."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import openid_tokens


class OpenIdStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_token(self, token_hash: bytes, user_id: str, valid_until_ms: int) -> None:
        await self._db.write_alone(
            sa.insert(openid_tokens).values(
                token_hash=token_hash, user_id=user_id, valid_until_ms=valid_until_ms
            )
        )

    async def get_user(self, token_hash: bytes, now_ms: int) -> str | None:
        """The user a token was issued to, ``None`` if unknown or expired."""
        query = sa.select(openid_tokens.c.user_id).where(
            openid_tokens.c.token_hash == token_hash,
            openid_tokens.c.valid_until_ms > now_ms,
        )
        async with self._db.read() as conn:
            user_id: str | None = (await conn.execute(query)).scalar()
        return user_id

    async def delete_expired(self, now_ms: int) -> None:
        await self._db.write_alone(
            sa.delete(openid_tokens).where(openid_tokens.c.valid_until_ms <= now_ms)
        )
