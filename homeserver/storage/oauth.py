"""The OAuth 2.0 API's clients and authorization codes."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from homeserver.core.types import JsonDict
from homeserver.storage.database import Database
from homeserver.storage.schema import oauth_clients, oauth_codes

_c = oauth_clients
_k = oauth_codes


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    client_id: str
    user_id: str
    device_id: str
    scope: str
    redirect_uri: str
    code_challenge: str
    expires_ts: int


class OAuthStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_client(self, client_id: str, client_metadata: JsonDict, now: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.insert(_c).values(
                    client_id=client_id,
                    metadata=orjson.dumps(client_metadata).decode(),
                    created_ts=now,
                )
            )

    async def get_client(self, client_id: str) -> JsonDict | None:
        async with self._db.read() as conn:
            value = (
                await conn.execute(sa.select(_c.c.metadata).where(_c.c.client_id == client_id))
            ).scalar_one_or_none()
        if value is None:
            return None
        loaded: JsonDict = orjson.loads(value)
        return loaded

    async def add_code(self, code_hash: bytes, code: AuthorizationCode) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.insert(_k).values(
                    code_hash=code_hash,
                    client_id=code.client_id,
                    user_id=code.user_id,
                    device_id=code.device_id,
                    scope=code.scope,
                    redirect_uri=code.redirect_uri,
                    code_challenge=code.code_challenge,
                    expires_ts=code.expires_ts,
                )
            )

    async def take_code(self, code_hash: bytes) -> AuthorizationCode | None:
        """The code, deleted in the same transaction: of two requests, one gets it."""
        async with self._db.write() as conn:
            r = (
                await conn.execute(sa.delete(_k).where(_k.c.code_hash == code_hash).returning(_k))
            ).first()
        if r is None:
            return None
        return AuthorizationCode(
            r.client_id,
            r.user_id,
            r.device_id,
            r.scope,
            r.redirect_uri,
            r.code_challenge,
            int(r.expires_ts),
        )

    async def delete_expired_codes(self, now: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(sa.delete(_k).where(_k.c.expires_ts <= now))
