"""The OAuth 2.0 API's clients and authorization codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from homeserver.core.types import JsonDict
from homeserver.storage.database import Database
from homeserver.storage.schema import (
    oauth_browser_sessions,
    oauth_clients,
    oauth_codes,
    oauth_device_grants,
)

_c = oauth_clients
_k = oauth_codes
_g = oauth_device_grants
_b = oauth_browser_sessions


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    client_id: str
    user_id: str
    device_id: str
    scope: str
    redirect_uri: str
    code_challenge: str
    expires_ts: int


@dataclass(frozen=True, slots=True)
class DeviceGrant:
    device_code_hash: bytes
    user_code: str
    client_id: str
    device_id: str
    expires_ts: int
    interval_ms: int
    last_poll_ts: int | None
    user_id: str | None
    denied: bool


def _grant(r: Any) -> DeviceGrant:
    return DeviceGrant(
        bytes(r.device_code_hash),
        r.user_code,
        r.client_id,
        r.device_id,
        int(r.expires_ts),
        int(r.interval_ms),
        None if r.last_poll_ts is None else int(r.last_poll_ts),
        r.user_id,
        bool(r.denied),
    )


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

    # --- device authorization grants -------------------------------------------------------

    async def add_device_grant(self, grant: DeviceGrant) -> bool:
        """False when the user code is taken (the caller draws another)."""
        async with self._db.write() as conn:
            taken = (
                await conn.execute(
                    sa.select(_g.c.user_code).where(_g.c.user_code == grant.user_code)
                )
            ).first()
            if taken is not None:
                return False
            await conn.execute(
                sa.insert(_g).values(
                    device_code_hash=grant.device_code_hash,
                    user_code=grant.user_code,
                    client_id=grant.client_id,
                    device_id=grant.device_id,
                    expires_ts=grant.expires_ts,
                    interval_ms=grant.interval_ms,
                    last_poll_ts=None,
                    user_id=None,
                    denied=False,
                )
            )
        return True

    async def device_grant_by_user_code(self, user_code: str) -> DeviceGrant | None:
        async with self._db.read() as conn:
            r = (await conn.execute(sa.select(_g).where(_g.c.user_code == user_code))).first()
        return _grant(r) if r is not None else None

    async def decide_device_grant(self, user_code: str, user_id: str | None) -> bool:
        """Approve (``user_id``) or deny (None) a grant still undecided; False otherwise."""
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(_g)
                .where(_g.c.user_code == user_code, _g.c.user_id.is_(None), ~_g.c.denied)
                .values(user_id=user_id, denied=user_id is None)
            )
        return bool(result.rowcount)

    async def poll_device_grant(self, device_code_hash: bytes, now: int) -> DeviceGrant | None:
        """The grant as it was, its poll time set to ``now``; an approved one is taken."""
        async with self._db.write() as conn:
            r = (
                await conn.execute(sa.select(_g).where(_g.c.device_code_hash == device_code_hash))
            ).first()
            if r is None:
                return None
            grant = _grant(r)
            if grant.user_id is not None or grant.denied:
                await conn.execute(sa.delete(_g).where(_g.c.device_code_hash == device_code_hash))
            else:
                await conn.execute(
                    sa.update(_g)
                    .where(_g.c.device_code_hash == device_code_hash)
                    .values(last_poll_ts=now)
                )
        return grant

    async def slow_down_device_grant(self, device_code_hash: bytes, interval_ms: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(_g)
                .where(_g.c.device_code_hash == device_code_hash)
                .values(interval_ms=interval_ms)
            )

    # --- browser sessions of the account pages ---------------------------------------------

    async def add_browser_session(self, token_hash: bytes, user_id: str, expires_ts: int) -> None:
        async with self._db.write() as conn:
            # Sessions a day past their end go as new ones come.
            await conn.execute(sa.delete(_b).where(_b.c.expires_ts <= expires_ts - 86_400_000))
            await conn.execute(
                sa.insert(_b).values(token_hash=token_hash, user_id=user_id, expires_ts=expires_ts)
            )

    async def browser_session_user(self, token_hash: bytes, now: int) -> str | None:
        async with self._db.read() as conn:
            query = sa.select(_b.c.user_id).where(
                _b.c.token_hash == token_hash, _b.c.expires_ts > now
            )
            value: str | None = (await conn.execute(query)).scalar_one_or_none()
        return value

    async def delete_browser_session(self, token_hash: bytes) -> None:
        async with self._db.write() as conn:
            await conn.execute(sa.delete(_b).where(_b.c.token_hash == token_hash))
