"""OpenID tokens: a user proves who they are to a third party (an integration manager, a
widget, Element Call's SFU), which asks this server's federation API whose token it holds."""

from __future__ import annotations

import secrets

from homeserver.accounts.tokens import hash_token
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.openid import OpenIdStore

# As Synapse: an hour, enough to hand the token over, short enough to be worth little later.
TOKEN_LIFETIME_MS = 3600 * 1000


class OpenIdService:
    def __init__(self, store: OpenIdStore, clock: Clock, server_name: str) -> None:
        self._store = store
        self._clock = clock
        self._server_name = server_name

    async def request_token(self, requester: Requester, user_id: UserID) -> JsonDict:
        if user_id != requester.user_id:
            raise MatrixError(Codes.FORBIDDEN, "Cannot request OpenID tokens for other users")
        token = secrets.token_urlsafe(32)
        now = self._clock.now_ms()
        await self._store.delete_expired(now)
        await self._store.add_token(hash_token(token), user_id, now + TOKEN_LIFETIME_MS)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self._server_name,
            "expires_in": TOKEN_LIFETIME_MS // 1000,
        }

    async def userinfo(self, token: str | None) -> JsonDict:
        """spec (Server-Server API, OpenID): ``{"sub": user_id}`` for a valid token."""
        if not token:
            raise MatrixError(Codes.MISSING_TOKEN, "Missing access_token")
        user_id = await self._store.get_user(hash_token(token), self._clock.now_ms())
        if user_id is None:
            raise MatrixError(Codes.UNKNOWN_TOKEN, "Unknown or expired OpenID token")
        return {"sub": user_id}
