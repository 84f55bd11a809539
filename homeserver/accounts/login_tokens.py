"""Login tokens: POST /login/get_token (spec v1.7, MSC3882) mints them for a signed-in user,
``m.login.token`` on POST /login spends them (once, before they expire)."""

from __future__ import annotations

import secrets

from homeserver.accounts.tokens import hash_token
from homeserver.accounts.uia import AuthChallenge, UiaService
from homeserver.core.clock import Clock
from homeserver.core.config import AuthConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.openid import LoginTokenStore

LOGIN_TOKEN = "m.login.token"
_REAUTH_FLOWS = [["m.login.password"]]


class LoginTokens:
    def __init__(
        self, store: LoginTokenStore, uia: UiaService, clock: Clock, config: AuthConfig
    ) -> None:
        self._store = store
        self._uia = uia
        self._clock = clock
        self._config = config

    @property
    def enabled(self) -> bool:
        return self._config.login_via_existing_session

    async def get_token(
        self, requester: Requester, auth: JsonDict | None, fingerprint: str
    ) -> JsonDict | AuthChallenge:
        if not self.enabled or requester.is_guest:
            # spec: 400 when the user may not mint tokens (the capability says so first).
            raise MatrixError(
                Codes.FORBIDDEN, "Login tokens are not available to this user", status=400
            )
        result = None
        if self._config.login_token_require_uia:
            outcome = await self._uia.authenticate(
                auth, _REAUTH_FLOWS, fingerprint, requester=requester.user_id
            )
            if isinstance(outcome, AuthChallenge):
                return outcome
            result = outcome
        token = secrets.token_urlsafe(32)
        lifetime = self._config.login_token_lifetime_ms
        valid_until = self._clock.now_ms() + lifetime
        await self._store.add_token(hash_token(token), requester.user_id, valid_until)
        if result is not None:
            await self._uia.finish(result)
        return {"login_token": token, "expires_in_ms": lifetime}

    async def spend(self, token: str | None) -> UserID:
        """The user a login token was minted for; 403 for an unknown, used or expired one."""
        if not token:
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: token")
        user_id = await self._store.take_token(hash_token(token), self._clock.now_ms())
        if user_id is None:
            raise MatrixError(Codes.FORBIDDEN, "Invalid or expired login token")
        return UserID(user_id)
