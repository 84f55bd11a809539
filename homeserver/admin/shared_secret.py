"""Registration with the shared secret (Synapse's ``/_synapse/admin/v1/register``): accounts,
administrators among them, made by a script that knows ``registration.shared_secret``, even
with registration closed. How operators bootstrap a server without a shell on it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from homeserver.accounts.service import AccountService
from homeserver.accounts.tokens import Session
from homeserver.admin.users import USER_TYPES
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import MAX_ID_BYTES, UserID, is_valid_new_localpart
from homeserver.storage.admin import AdminStore

logger = logging.getLogger(__name__)

# A nonce is good for this long; it is signed rather than stored, so any worker accepts it.
NONCE_LIFETIME_MS = 60_000


class SharedSecretRegistration:
    def __init__(
        self,
        secret: str | None,
        accounts: AccountService,
        store: AdminStore,
        clock: Clock,
        server_name: str,
    ) -> None:
        self._secret = secret.encode() if secret is not None else None
        self._accounts = accounts
        self._store = store
        self._clock = clock
        self._server_name = server_name

    def _key(self) -> bytes:
        if self._secret is None:
            raise MatrixError(
                Codes.UNKNOWN, "Shared secret registration is not enabled", status=400
            )
        return self._secret

    def new_nonce(self) -> str:
        key = self._key()
        body = f"{self._clock.now_ms() + NONCE_LIFETIME_MS}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(key, body)}"

    @staticmethod
    def _sign(key: bytes, body: str) -> str:
        return hmac.new(key, b"nonce\0" + body.encode(), hashlib.sha256).hexdigest()[:32]

    def _check_nonce(self, key: bytes, nonce: str) -> None:
        body, _, signature = nonce.rpartition(".")
        expires, _, _ = body.partition(".")
        if (
            not hmac.compare_digest(self._sign(key, body), signature)
            or not expires.isdigit()
            or int(expires) < self._clock.now_ms()
        ):
            raise MatrixError(Codes.UNKNOWN, "Unrecognised nonce", status=400)

    async def register(
        self,
        nonce: str,
        username: str,
        password: str,
        admin: bool,
        user_type: str | None,
        displayname: str | None,
        mac: str,
        client_ip: str | None,
    ) -> Session:
        key = self._key()
        self._check_nonce(key, nonce)
        expected = hmac.new(key, digestmod=hashlib.sha1)
        for part in (nonce, username, password):
            expected.update(part.encode() + b"\0")
        expected.update(b"admin" if admin else b"notadmin")
        if user_type is not None:
            expected.update(b"\0" + user_type.encode())
        if not hmac.compare_digest(expected.hexdigest(), mac.lower()):
            raise MatrixError(Codes.FORBIDDEN, "HMAC incorrect")
        if user_type is not None and user_type not in USER_TYPES:
            raise MatrixError(Codes.INVALID_PARAM, f"user_type must be one of {USER_TYPES}")
        localpart = username.lower() if username.isascii() else username
        if not is_valid_new_localpart(localpart):
            raise MatrixError(Codes.INVALID_USERNAME, "Invalid username")
        user_id = UserID.of(localpart, self._server_name)
        if len(user_id.encode()) > MAX_ID_BYTES:
            raise MatrixError(Codes.INVALID_USERNAME, "Username is too long")
        if not await self._accounts.create_user_as_admin(
            user_id, password, admin=admin, displayname=displayname
        ):
            raise MatrixError(Codes.USER_IN_USE, "User ID already taken")
        if user_type is not None:
            await self._store.set_moderation(user_id, user_type=user_type)
        logger.info("user registered with the shared secret", extra={"user_id": user_id})
        return await self._accounts.open_session(user_id, client_ip)
