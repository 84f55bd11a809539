"""Access tokens and passwords: who a request comes from.

Tokens are random, stored as their SHA-256 and looked up through a small cache; a token
revoked on this worker leaves the cache at once, and every other worker's through the cache
invalidation stream (``caches/invalidations.py``: on its next wake-up or poll).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cachetools import TTLCache

from homeserver.appservice.registration import AppService, AppServices
from homeserver.caches.invalidations import TOKENS, CacheInvalidations
from homeserver.core.clock import Clock
from homeserver.core.config import AuthConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import Requester
from homeserver.storage.accounts import AccountStore, ActingUser

# A cached token is re-read from the database at least this often: a backstop behind the
# invalidation stream, which drops a token revoked on another worker within its poll.
TOKEN_CACHE_TTL_S = 30.0
# The cache's keys in the invalidation stream: ``t:<token hash, hex>``, ``d:<user
# ID>|<device ID>`` (a device's tokens), ``u:<user ID>`` (a user's tokens) and ``a:<user
# ID>`` (a user an application service acts as).
TOKENS_CACHE = TOKENS
# An application service's requests come with its as_token, which has no row: no token ID.
APP_SERVICE_TOKEN_ID = 0


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_device_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(10))


@dataclass(frozen=True, slots=True)
class Session:
    """What /login and /register hand a client."""

    user_id: UserID
    device_id: str
    access_token: str
    refresh_token: str | None
    expires_in_ms: int | None


class AuthService:
    def __init__(
        self,
        store: AccountStore,
        clock: Clock,
        config: AuthConfig,
        appservices: AppServices | None = None,
        invalidations: CacheInvalidations | None = None,
    ) -> None:
        self._store = store
        self._invalidations = invalidations
        self._appservices = appservices or AppServices(())
        # Users an application service acted as, known to exist, with their flags (re-read
        # as tokens are).
        self._app_service_users: TTLCache[str, ActingUser] = TTLCache(
            maxsize=max(1, config.token_cache_size), ttl=TOKEN_CACHE_TTL_S
        )
        self._clock = clock
        self._config = config
        self._hasher = PasswordHasher(
            time_cost=config.password_hash_time_cost,
            memory_cost=config.password_hash_memory_kib,
            parallelism=1,
        )
        self._cache: TTLCache[bytes, tuple[Requester, int | None, bool]] = TTLCache(
            maxsize=max(1, config.token_cache_size), ttl=TOKEN_CACHE_TTL_S
        )
        # Hashing is CPU-bound and takes password_hash_memory_kib each: more at once than
        # there are cores adds no speed, only memory (eight at once held 150 MB more).
        self._hashing = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))
        if invalidations is not None:
            invalidations.register(TOKENS_CACHE, self._drop, self._clear)

    # --- passwords -------------------------------------------------------------------------

    async def hash_password(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hasher.hash, password, limiter=self._hashing)

    async def check_password(self, password_hash: str | None, password: str) -> bool:
        if password_hash is None:
            return False

        def verify() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await anyio.to_thread.run_sync(verify, limiter=self._hashing)

    # --- tokens ----------------------------------------------------------------------------

    async def get_requester(
        self,
        token: str,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        allow_locked: bool = False,
    ) -> Requester:
        """Whose token it is. ``user_id`` and ``device_id`` are the query parameters with
        which an application service acts as a user (and a device) of its namespaces; they
        mean nothing with a user's token (spec: identity assertion). A locked account's
        tokens are refused (spec, "Account locking": 401 ``M_USER_LOCKED``, a soft logout)
        except where ``allow_locked`` (the logout endpoints)."""
        service = self._appservices.by_token(token)
        if service is not None:
            return await self._app_service_requester(service, user_id, device_id, allow_locked)
        key = hash_token(token)
        cached = self._cache.get(key)
        if cached is None:
            generation = self._generation()
            info = await self._store.get_token(key)
            if info is None:
                raise MatrixError(Codes.UNKNOWN_TOKEN, "Unknown access token", soft_logout=False)
            if info.deactivated:
                raise MatrixError(Codes.UNKNOWN_TOKEN, "User is deactivated", soft_logout=False)
            cached = (
                Requester(
                    info.user_id,
                    info.device_id,
                    info.token_id,
                    info.is_admin,
                    shadow_banned=info.shadow_banned,
                    suspended=info.suspended,
                    is_guest=info.is_guest,
                ),
                info.valid_until_ms,
                info.locked,
            )
            if self._generation() == generation:  # else it may predate a drop: not kept
                self._cache[key] = cached
        requester, valid_until_ms, locked = cached
        if locked and not allow_locked:
            raise MatrixError(Codes.USER_LOCKED, "This account has been locked", soft_logout=True)
        if valid_until_ms is not None and self._clock.now_ms() >= valid_until_ms:
            # spec: an expired token that can be refreshed is a soft logout.
            raise MatrixError(Codes.UNKNOWN_TOKEN, "Access token has expired", soft_logout=True)
        return requester

    def app_service_of_token(self, token: str) -> AppService | None:
        return self._appservices.by_token(token)

    async def _app_service_requester(
        self,
        service: AppService,
        user_id: str | None,
        device_id: str | None,
        allow_locked: bool = False,
    ) -> Requester:
        acting_as = service.sender
        shadow_banned = suspended = False
        if user_id is not None and user_id != service.sender:
            try:
                acting_as = UserID.parse(user_id)
            except MatrixError:
                raise MatrixError(Codes.INVALID_PARAM, "user_id is not a valid user ID") from None
            if not service.is_user_in_namespace(acting_as):
                raise MatrixError(Codes.FORBIDDEN, "Application service cannot act as this user")
            acting = self._app_service_users.get(acting_as)
            if acting is None:
                generation = self._generation()
                acting = await self._store.get_acting_user(acting_as)
                if acting is None:
                    raise MatrixError(
                        Codes.FORBIDDEN, "Application service has not registered this user"
                    )
                if acting.deactivated:
                    raise MatrixError(Codes.FORBIDDEN, "This user is deactivated")
                if self._generation() == generation:
                    self._app_service_users[acting_as] = acting
            # The user's own flags hold when a service acts as them, as with their tokens.
            if acting.locked and not allow_locked:
                raise MatrixError(
                    Codes.USER_LOCKED, "This account has been locked", soft_logout=True
                )
            shadow_banned, suspended = acting.shadow_banned, acting.suspended
        # The sender has no device; a user acting through the service uses the device the
        # service names (encryption bridges, MSC3202 and spec v1.17's device_id), which
        # must exist. Without one, "" stands for "no device": no token row has it.
        acting_device = ""
        if device_id is not None:
            if await self._store.get_device(acting_as, device_id) is None:
                raise MatrixError(
                    Codes.UNKNOWN_DEVICE, f"User {acting_as} has no device {device_id}"
                )
            acting_device = device_id
        return Requester(
            acting_as,
            acting_device,
            APP_SERVICE_TOKEN_ID,
            False,
            app_service_id=service.id,
            # The sender itself is never limited (as Synapse); its users unless rate_limited
            # is false.
            rate_limited=service.rate_limited and acting_as != service.sender,
            shadow_banned=shadow_banned,
            suspended=suspended,
        )

    async def create_session(
        self,
        user_id: UserID,
        device_id: str,
        *,
        refreshable: bool,
        oauth_client_id: str | None = None,
    ) -> Session:
        """A new access token, and a refresh token if ``refreshable`` (bound to the OAuth
        client ``oauth_client_id`` when the session is one of its grants)."""
        now = self._clock.now_ms()
        access = new_token("mat")
        if not refreshable:
            await self._store.add_access_token(
                user_id, device_id, hash_token(access), now, None, None
            )
            return Session(user_id, device_id, access, None, None)
        refresh = new_token("mar")
        lifetime = self._config.access_token_lifetime_ms
        refresh_id = await self._store.add_refresh_token(
            user_id, device_id, hash_token(refresh), now, oauth_client_id
        )
        await self._store.add_access_token(
            user_id, device_id, hash_token(access), now, now + lifetime, refresh_id
        )
        return Session(user_id, device_id, access, refresh, lifetime)

    async def create_token(
        self, user_id: UserID, device_id: str, valid_until_ms: int | None
    ) -> str:
        """An access token alone, for a device that need not exist (an administrator acting
        as the user); it expires at ``valid_until_ms`` if given."""
        access = new_token("mat")
        await self._store.add_access_token(
            user_id, device_id, hash_token(access), self._clock.now_ms(), valid_until_ms, None
        )
        return access

    async def refresh(self, refresh_token: str, oauth_client_id: str | None = None) -> Session:
        """Rotate a session's tokens. ``oauth_client_id``: the OAuth client asking (None for
        /refresh); a refresh token is only for the client it was issued to."""
        info = await self._store.get_refresh_token(hash_token(refresh_token))
        if info is None or info.next_token_id is not None:
            raise MatrixError(Codes.UNKNOWN_TOKEN, "Unknown refresh token", soft_logout=False)
        if info.oauth_client_id != oauth_client_id:
            raise MatrixError(
                Codes.UNKNOWN_TOKEN,
                "This refresh token was issued to another client"
                if oauth_client_id is not None
                else "This refresh token belongs to an OAuth client: refresh at its token endpoint",
                soft_logout=False,
            )
        if await self._store.is_locked(info.user_id):
            raise MatrixError(Codes.USER_LOCKED, "This account has been locked", soft_logout=True)
        now = self._clock.now_ms()
        access, refresh = new_token("mat"), new_token("mar")
        lifetime = self._config.access_token_lifetime_ms
        if not await self._store.replace_refresh_token(
            info.token_id,
            info.user_id,
            info.device_id,
            hash_token(refresh),
            hash_token(access),
            now,
            now + lifetime,
            info.oauth_client_id,
        ):
            raise MatrixError(Codes.UNKNOWN_TOKEN, "Refresh token already used", soft_logout=False)
        await self.forget_tokens_of_device_cache(info.user_id, info.device_id)
        return Session(info.user_id, info.device_id, access, refresh, lifetime)

    async def revoke(self, requester: Requester) -> None:
        if requester.app_service_id is not None:
            return  # an as_token is the operator's, not revocable by /logout
        token_hash = await self._store.delete_access_token(requester.token_id)
        if token_hash is not None:
            await self._forget([f"t:{bytes(token_hash).hex()}"])

    async def forget_user(self, user_id: str) -> None:
        """A deactivated user: their tokens go, and application services may no longer act
        as them."""
        await self._forget([f"u:{user_id}", f"a:{user_id}"])

    async def forget_cached(self, token_hashes: list[bytes]) -> None:
        await self._forget([f"t:{bytes(h).hex()}" for h in token_hashes])

    async def forget_tokens_of_device_cache(self, user_id: UserID, device_id: str) -> None:
        await self._forget([f"d:{user_id}|{device_id}"])

    async def forget_user_cache(self, user_id: UserID) -> None:
        """Read the user's tokens again (an administrator changed the account's flags, or a
        guest account was upgraded)."""
        await self._forget([f"u:{user_id}", f"a:{user_id}"])

    # --- the cache, on every worker --------------------------------------------------------

    async def _forget(self, keys: list[str]) -> None:
        if self._invalidations is not None:
            await self._invalidations.invalidate(TOKENS_CACHE, keys)
        else:
            for key in keys:
                self._drop(key)

    def _generation(self) -> int:
        return 0 if self._invalidations is None else self._invalidations.generation(TOKENS_CACHE)

    def _drop(self, key: str) -> None:
        kind, _, rest = key.partition(":")
        if kind == "t":
            try:
                self._cache.pop(bytes.fromhex(rest), None)
            except ValueError:
                pass
        elif kind == "a":
            self._app_service_users.pop(rest, None)
        elif kind in ("d", "u"):
            user_id, _, device_id = rest.partition("|")
            for token_key, (requester, _, _) in list(self._cache.items()):
                if requester.user_id == user_id and (
                    kind == "u" or requester.device_id == device_id
                ):
                    self._cache.pop(token_key, None)

    def _clear(self) -> None:
        self._cache.clear()
        self._app_service_users.clear()
