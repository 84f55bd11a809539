"""OpenID tokens (who a third party's token names) and login tokens (m.login.token)."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import login_tokens, openid_tokens


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


class LoginTokenStore:
    """Login tokens (m.login.token): each names a user once, until it expires."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_token(self, token_hash: bytes, user_id: str, valid_until_ms: int) -> None:
        await self._db.write_alone(
            sa.insert(login_tokens).values(
                token_hash=token_hash, user_id=user_id, valid_until_ms=valid_until_ms
            )
        )

    async def take_token(self, token_hash: bytes, now_ms: int) -> str | None:
        """The user of an unexpired token, which is used up; ``None`` if unknown, used or
        expired. Expired tokens go with it."""
        async with self._db.write() as conn:
            user_id: str | None = (
                await conn.execute(
                    sa.select(login_tokens.c.user_id).where(
                        login_tokens.c.token_hash == token_hash,
                        login_tokens.c.valid_until_ms > now_ms,
                    )
                )
            ).scalar()
            taken = await conn.execute(
                sa.delete(login_tokens).where(login_tokens.c.token_hash == token_hash)
            )
            await conn.execute(
                sa.delete(login_tokens).where(login_tokens.c.valid_until_ms <= now_ms)
            )
        # Two logins racing for one token: only the one whose delete removed it wins.
        return user_id if taken.rowcount else None
