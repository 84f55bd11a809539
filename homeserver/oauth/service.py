"""The OAuth 2.0 API's server side: metadata, clients, the authorization code grant with
PKCE, refresh with rotation, revocation (docs/sign-in.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode, urlsplit

from homeserver.accounts.profile import ProfileService
from homeserver.accounts.service import AccountService
from homeserver.accounts.tokens import hash_token, new_device_id
from homeserver.core.clock import Clock
from homeserver.core.config import OAuthConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID, is_valid_device_id
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.core.types import JsonDict, Requester
from homeserver.oauth.clients import (
    GRANT_AUTHORIZATION_CODE,
    GRANT_DEVICE_CODE,
    GRANT_REFRESH_TOKEN,
    redirect_uri_matches,
    validate_client_metadata,
)
from homeserver.oauth.errors import OAuthError
from homeserver.storage.accounts import AccountStore, Device
from homeserver.storage.oauth import AuthorizationCode, DeviceGrant, OAuthStore

logger = logging.getLogger(__name__)

API_SCOPE = "urn:matrix:client:api:*"
DEVICE_SCOPE_PREFIX = "urn:matrix:client:device:"
ACCOUNT_ACTIONS = (
    "org.matrix.profile",
    "org.matrix.devices_list",
    "org.matrix.device_view",
    "org.matrix.device_delete",
)
# The older names of the same actions (MSC4191's first draft), still sent by some clients.
ACCOUNT_ACTION_ALIASES = {
    "org.matrix.sessions_list": "org.matrix.devices_list",
    "org.matrix.session_view": "org.matrix.device_view",
    "org.matrix.session_end": "org.matrix.device_delete",
}
BROWSER_SESSION_LIFETIME_MS = 60 * 60 * 1000
# RFC 8628 section 6.1: no vowels (no words), no look-alikes; 20^8 codes.
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
DEVICE_GRANT_LIFETIME_MS = 10 * 60 * 1000
DEVICE_POLL_INTERVAL_MS = 5000
_PKCE_VERIFIER_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


_UNSTABLE_SCOPE_PREFIX = "urn:matrix:org.matrix.msc2967.client:"


def _stable_scopes(scope: str) -> list[str]:
    """The scopes asked for, MSC2967's unstable names (clients still send them) as stable."""
    return [
        "urn:matrix:client:" + s[len(_UNSTABLE_SCOPE_PREFIX) :]
        if s.startswith(_UNSTABLE_SCOPE_PREFIX)
        else s
        for s in scope.split()
    ]


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of secrets; any text (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode(), expected.encode())


class LoginTokens(Protocol):
    """The login tokens single sign-on hands out (SsoStore), spent here by a sign-in that
    came back from an upstream provider."""

    async def take_login_token(self, token_hash: bytes, now: int) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A checked authorization request: what the sign-in page shows and then grants."""

    client_id: str
    client_name: str
    client_uri: str
    redirect_uri: str
    state: str | None
    response_mode: str  # query or fragment
    device_id: str
    code_challenge: str
    create: bool  # prompt=create: the page offers registration

    @property
    def scope(self) -> str:
        return f"{API_SCOPE} {DEVICE_SCOPE_PREFIX}{self.device_id}"


class RedirectError(Exception):
    """An error the client hears at its (checked) redirect URI."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _redirect(redirect_uri: str, response_mode: str, params: dict[str, str]) -> str:
    encoded = urlencode(params)
    if response_mode == "fragment":
        return f"{redirect_uri}#{encoded}"
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return f"{redirect_uri}{separator}{encoded}"


class OAuthService:
    def __init__(
        self,
        config: OAuthConfig,
        store: OAuthStore,
        account_store: AccountStore,
        accounts: AccountService,
        clock: Clock,
        base_url: str,
        access_token_lifetime_ms: int,
        *,
        login_tokens: LoginTokens | None = None,
        sso_providers: Sequence[tuple[str, str]] = (),
        profiles: ProfileService | None = None,
        ratelimiter: RateLimiter | None = None,
    ) -> None:
        self._profiles = profiles
        self._ratelimiter = ratelimiter
        self._login_tokens = login_tokens
        self.sso_providers = tuple(sso_providers)  # (id, name): offered on the sign-in page
        self._config = config
        self._store = store
        self._account_store = account_store
        self._accounts = accounts
        self._clock = clock
        self._issuer = base_url
        self._access_token_lifetime_ms = access_token_lifetime_ms

    # --- discovery and registration --------------------------------------------------------

    def metadata(self) -> JsonDict:
        base = self._issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}oauth2/authorize",
            "token_endpoint": f"{base}oauth2/token",
            "registration_endpoint": f"{base}oauth2/register",
            "revocation_endpoint": f"{base}oauth2/revoke",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "fragment"],
            "device_authorization_endpoint": f"{base}oauth2/device",
            "grant_types_supported": [
                GRANT_AUTHORIZATION_CODE,
                GRANT_REFRESH_TOKEN,
                GRANT_DEVICE_CODE,
            ],
            "code_challenge_methods_supported": ["S256"],
            "prompt_values_supported": ["create"],
            "account_management_uri": f"{base}oauth2/account",
            "account_management_actions_supported": list(ACCOUNT_ACTIONS),
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": [API_SCOPE, f"{DEVICE_SCOPE_PREFIX}*"],
        }

    async def register_client(self, body: JsonDict, client_ip: str | None = None) -> JsonDict:
        if self._ratelimiter is not None and client_ip is not None:
            # Registration is open to anyone: the registration limit, per address.
            try:
                await self._ratelimiter.check(Action.REGISTRATION, f"oauth-client:{client_ip}")
            except MatrixError as e:
                raise OAuthError("slow_down", "too many client registrations", 429) from e
        kept = validate_client_metadata(body)
        client_id = secrets.token_urlsafe(16)
        now = self._clock.now_ms()
        await self._store.add_client(client_id, kept, now)
        logger.info("OAuth client registered", extra={"client_id": client_id})
        return {"client_id": client_id, "client_id_issued_at": now // 1000, **kept}

    # --- the authorization endpoint --------------------------------------------------------

    async def check_authorization_request(self, params: dict[str, str]) -> AuthorizationRequest:
        """``OAuthError`` when the client or redirect URI cannot be trusted (shown on a page,
        never redirected); ``RedirectError`` for the rest (sent back to the client)."""
        client_id = params.get("client_id", "")
        client = await self._store.get_client(client_id) if client_id else None
        if client is None:
            raise OAuthError("invalid_client", "Unknown client")
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri_matches(client["redirect_uris"], redirect_uri):
            raise OAuthError("invalid_request", "The redirect URI is not one the client registered")
        response_mode = params.get("response_mode", "query")
        if response_mode not in ("query", "fragment"):
            response_mode = "query"
        state = params.get("state")

        def fail(error: str, description: str) -> RedirectError:
            out = {"error": error, "error_description": description}
            if state is not None:
                out["state"] = state
            return RedirectError(_redirect(redirect_uri, response_mode, out))

        if params.get("response_type") != "code":
            raise fail("unsupported_response_type", "response_type must be code")
        if params.get("code_challenge_method") != "S256":
            raise fail("invalid_request", "code_challenge_method must be S256")
        challenge = params.get("code_challenge", "")
        if len(challenge) != 43 or not set(challenge) <= _PKCE_VERIFIER_CHARS:
            raise fail("invalid_request", "code_challenge must be a S256 challenge")
        if params.get("prompt") not in (None, "", "login", "consent", "create"):
            raise fail("invalid_request", "unsupported prompt value")
        if params.get("prompt") == "create" and not self._accounts.open_registration():
            raise fail("login_required", "registration is not open on this server")
        scopes = _stable_scopes(params.get("scope", ""))
        device_id: str | None = None
        if API_SCOPE not in scopes:
            raise fail("invalid_scope", f"the scope must include {API_SCOPE}")
        for scope in scopes:
            if scope == API_SCOPE:
                continue
            if scope.startswith(DEVICE_SCOPE_PREFIX) and device_id is None:
                device_id = scope[len(DEVICE_SCOPE_PREFIX) :]
                if not is_valid_device_id(device_id):
                    raise fail("invalid_scope", "the device ID in the scope is not valid")
                continue
            raise fail("invalid_scope", f"unsupported or repeated scope {scope}")
        return AuthorizationRequest(
            client_id=client_id,
            client_name=str(client.get("client_name") or client["client_uri"]),
            client_uri=client["client_uri"],
            redirect_uri=redirect_uri,
            state=state,
            response_mode=response_mode,
            device_id=device_id or new_device_id(),
            code_challenge=challenge,
            create=params.get("prompt") == "create",
        )

    async def check_password(self, username: str, password: str, client_ip: str | None) -> UserID:
        """The sign-in page's username and password (``MatrixError`` when refused)."""
        return await self._accounts.check_password_sign_in(username, password, client_ip)

    def sso_redirect_url(self, idp_id: str, params: dict[str, str], csrf: str) -> str:
        """Where a provider's button on the sign-in page goes: single sign-on, coming back
        to this authorization with a login token and the browser's CSRF token."""
        back = f"{self._issuer}oauth2/authorize?{urlencode({**params, 'sso_csrf': csrf})}"
        query = urlencode({"redirectUrl": back})
        return f"{self._issuer}_matrix/client/v3/login/sso/redirect/{idp_id}?{query}"

    async def user_of_login_token(self, token: str) -> UserID | None:
        """The account a single sign-on came back with (the token is used up)."""
        if self._login_tokens is None:
            return None
        user_id = await self._login_tokens.take_login_token(hash_token(token), self._clock.now_ms())
        return None if user_id is None else UserID(user_id)

    async def register(self, username: str, password: str, client_ip: str | None) -> UserID:
        """prompt=create's form (``MatrixError`` when refused)."""
        return await self._accounts.register_on_page(username, password, client_ip)

    async def grant(self, request: AuthorizationRequest, user_id: UserID) -> str:
        """The user said yes: a short-lived code, and where the browser goes with it."""
        code = secrets.token_urlsafe(32)
        await self._store.delete_expired_codes(self._clock.now_ms())
        await self._store.add_code(
            hash_token(code),
            AuthorizationCode(
                request.client_id,
                user_id,
                request.device_id,
                request.scope,
                request.redirect_uri,
                request.code_challenge,
                self._clock.now_ms() + self._config.code_lifetime_ms,
            ),
        )
        params = {"code": code}
        if request.state is not None:
            params["state"] = request.state
        return _redirect(request.redirect_uri, request.response_mode, params)

    def denied(self, request: AuthorizationRequest) -> str:
        params = {"error": "access_denied", "error_description": "The user said no"}
        if request.state is not None:
            params["state"] = request.state
        return _redirect(request.redirect_uri, request.response_mode, params)

    # --- the device authorization grant (RFC 8628) -----------------------------------------

    def _device_of_scope(self, scope: str) -> str:
        scopes = _stable_scopes(scope)
        device_id: str | None = None
        if API_SCOPE not in scopes:
            raise OAuthError("invalid_scope", f"the scope must include {API_SCOPE}")
        for item in scopes:
            if item == API_SCOPE:
                continue
            if item.startswith(DEVICE_SCOPE_PREFIX) and device_id is None:
                device_id = item[len(DEVICE_SCOPE_PREFIX) :]
                if is_valid_device_id(device_id):
                    continue
            raise OAuthError("invalid_scope", f"unsupported or repeated scope {item}")
        return device_id or new_device_id()

    async def start_device_grant(self, form: dict[str, str]) -> JsonDict:
        client = await self._client(form)
        if GRANT_DEVICE_CODE not in client["grant_types"]:
            raise OAuthError("unauthorized_client", "the client did not register this grant")
        device_id = self._device_of_scope(form.get("scope", ""))
        device_code = secrets.token_urlsafe(32)
        now = self._clock.now_ms()
        for _ in range(5):
            raw = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
            user_code = f"{raw[:4]}-{raw[4:]}"
            grant = DeviceGrant(
                hash_token(device_code),
                user_code,
                form["client_id"],
                device_id,
                now + DEVICE_GRANT_LIFETIME_MS,
                DEVICE_POLL_INTERVAL_MS,
                None,
                None,
                False,
            )
            if await self._store.add_device_grant(grant):
                break
        else:
            raise OAuthError("server_error", "could not draw a free user code", status=500)
        verification_uri = f"{self._issuer}oauth2/device-link"
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?{urlencode({'code': user_code})}",
            "expires_in": DEVICE_GRANT_LIFETIME_MS // 1000,
            "interval": DEVICE_POLL_INTERVAL_MS // 1000,
        }

    async def device_grant_for_user_code(self, user_code: str) -> DeviceGrant | None:
        """The pending grant a person typed the code of (any case, with or without the dash)."""
        letters = "".join(c for c in user_code.upper() if c.isalnum())
        if len(letters) != 8:
            return None
        grant = await self._store.device_grant_by_user_code(f"{letters[:4]}-{letters[4:]}")
        if grant is None or grant.expires_ts <= self._clock.now_ms():
            return None
        if grant.user_id is not None or grant.denied:
            return None
        return grant

    async def client_name(self, client_id: str) -> str:
        client = await self._store.get_client(client_id)
        if client is None:
            return client_id
        return str(client.get("client_name") or client["client_uri"])

    async def decide_device_grant(self, grant: DeviceGrant, user_id: UserID | None) -> bool:
        return await self._store.decide_device_grant(grant.user_code, user_id)

    async def _poll_device_grant(self, form: dict[str, str], client_ip: str | None) -> JsonDict:
        await self._client(form)
        device_code = form.get("device_code")
        if not device_code:
            raise OAuthError("invalid_request", "device_code is missing")
        now = self._clock.now_ms()
        code_hash = hash_token(device_code)
        grant = await self._store.poll_device_grant(code_hash, now)
        if grant is None or grant.client_id != form.get("client_id"):
            raise OAuthError("invalid_grant", "unknown device code")
        if grant.expires_ts <= now:
            raise OAuthError("expired_token", "the device code has expired")
        if grant.denied:
            raise OAuthError("access_denied", "the user said no")
        if grant.user_id is None:
            if grant.last_poll_ts is not None and now - grant.last_poll_ts < grant.interval_ms:
                # RFC 8628 section 3.5: slow down, and the interval grows by 5 seconds.
                await self._store.slow_down_device_grant(code_hash, grant.interval_ms + 5000)
                raise OAuthError("slow_down", "polling too fast")
            raise OAuthError("authorization_pending", "the user has not answered yet")
        try:
            session = await self._accounts.start_refreshable_session(
                UserID(grant.user_id), grant.device_id, client_ip, grant.client_id
            )
        except MatrixError as e:
            raise OAuthError("invalid_grant", e.message) from e
        return self._token_response(session.access_token, session.refresh_token, grant.device_id)

    # --- the account management pages -----------------------------------------------------

    async def start_browser_session(self, user_id: UserID) -> str:
        token = secrets.token_urlsafe(32)
        expires = self._clock.now_ms() + BROWSER_SESSION_LIFETIME_MS
        await self._store.add_browser_session(hash_token(token), user_id, expires)
        return token

    async def browser_user(self, token: str | None) -> UserID | None:
        if not token:
            return None
        user_id = await self._store.browser_session_user(hash_token(token), self._clock.now_ms())
        return None if user_id is None else UserID(user_id)

    async def end_browser_session(self, token: str) -> None:
        await self._store.delete_browser_session(hash_token(token))

    async def devices(self, user_id: UserID) -> list[Device]:
        return await self._account_store.get_devices(user_id)

    async def end_device(self, user_id: UserID, device_id: str) -> bool:
        if await self._account_store.get_device(user_id, device_id) is None:
            return False
        await self._accounts.end_session(user_id, device_id)
        logger.info("session ended on the account page", extra={"user_id": user_id})
        return True

    async def displayname(self, user_id: UserID) -> str | None:
        if self._profiles is None:
            return None
        profile = await self._profiles.get_profile(user_id)
        return None if profile is None else profile.displayname

    async def set_displayname(self, user_id: UserID, displayname: str) -> None:
        """``MatrixError`` when the name is refused (too long)."""
        if self._profiles is None:
            raise MatrixError(Codes.FORBIDDEN, "Profiles cannot be changed here")
        await self._profiles.set_field(
            Requester(user_id, "", 0), user_id, "displayname", displayname
        )

    # --- the token endpoint ----------------------------------------------------------------

    async def token(self, form: dict[str, str], client_ip: str | None) -> JsonDict:
        grant_type = form.get("grant_type")
        if grant_type == GRANT_AUTHORIZATION_CODE:
            return await self._exchange_code(form, client_ip)
        if grant_type == GRANT_REFRESH_TOKEN:
            return await self._refresh(form)
        if grant_type == GRANT_DEVICE_CODE:
            return await self._poll_device_grant(form, client_ip)
        raise OAuthError("unsupported_grant_type", f"unsupported grant_type {grant_type!r}")

    async def _client(self, form: dict[str, str]) -> JsonDict:
        client_id = form.get("client_id", "")
        client = await self._store.get_client(client_id) if client_id else None
        if client is None:
            raise OAuthError("invalid_client", "Unknown client", status=401)
        return client

    async def _exchange_code(self, form: dict[str, str], client_ip: str | None) -> JsonDict:
        client = await self._client(form)
        if GRANT_AUTHORIZATION_CODE not in client["grant_types"]:
            raise OAuthError("unauthorized_client", "the client did not register this grant")
        code = form.get("code")
        verifier = form.get("code_verifier")
        if not code:
            raise OAuthError("invalid_request", "code is missing")
        if not verifier:
            raise OAuthError("invalid_request", "code_verifier is missing")
        # Taken (deleted) before any check: a code is tried once, right or wrong.
        grant = await self._store.take_code(hash_token(code))
        if grant is None:
            raise OAuthError("invalid_grant", "unknown or already used code")
        if grant.expires_ts <= self._clock.now_ms():
            raise OAuthError("invalid_grant", "the code has expired")
        if grant.client_id != form.get("client_id"):
            raise OAuthError("invalid_grant", "the code was given to another client")
        if grant.redirect_uri != form.get("redirect_uri"):
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization's")
        if not (43 <= len(verifier) <= 128 and set(verifier) <= _PKCE_VERIFIER_CHARS):
            raise OAuthError("invalid_grant", "code_verifier is not a PKCE verifier")
        if not _same(s256(verifier), grant.code_challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the challenge")
        try:
            session = await self._accounts.start_refreshable_session(
                UserID(grant.user_id), grant.device_id, client_ip, grant.client_id
            )
        except MatrixError as e:
            raise OAuthError("invalid_grant", e.message) from e
        logger.info(
            "OAuth session started",
            extra={"user_id": grant.user_id, "device_id": grant.device_id},
        )
        return self._token_response(session.access_token, session.refresh_token, grant.device_id)

    async def _refresh(self, form: dict[str, str]) -> JsonDict:
        client = await self._client(form)
        if GRANT_REFRESH_TOKEN not in client["grant_types"]:
            raise OAuthError("unauthorized_client", "the client did not register this grant")
        token = form.get("refresh_token")
        if not token:
            raise OAuthError("invalid_request", "refresh_token is missing")
        info = await self._account_store.get_refresh_token(hash_token(token))
        if info is None:
            raise OAuthError("invalid_grant", "unknown refresh token")
        if info.oauth_client_id is None or not _same(info.oauth_client_id, form["client_id"]):
            # RFC 6749 section 6: a refresh token is bound to the client it was issued to
            # (and one of /login refreshes through /refresh only).
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        if info.next_token_id is not None:
            # A used refresh token again: a copy is in someone else's hands. The session
            # ends, for the thief and for the client alike (OAuth 2.0 Security BCP 4.14).
            await self._accounts.end_session(info.user_id, info.device_id)
            logger.warning(
                "refresh token reused: session ended",
                extra={"user_id": info.user_id, "device_id": info.device_id},
            )
            raise OAuthError("invalid_grant", "refresh token already used: session ended")
        try:
            session = await self._accounts.refresh(token, form["client_id"])
        except MatrixError as e:
            raise OAuthError("invalid_grant", e.message) from e
        return self._token_response(session.access_token, session.refresh_token, info.device_id)

    def _token_response(self, access: str, refresh: str | None, device_id: str) -> JsonDict:
        out: JsonDict = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self._access_token_lifetime_ms // 1000,
            "scope": f"{API_SCOPE} {DEVICE_SCOPE_PREFIX}{device_id}",
        }
        if refresh is not None:
            out["refresh_token"] = refresh
        return out

    # --- revocation (RFC 7009) -------------------------------------------------------------

    async def revoke(self, form: dict[str, str]) -> None:
        """Ends the session of an access or refresh token; an unknown token is no error."""
        await self._client(form)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is missing")
        token_hash = hash_token(token)
        hint = form.get("token_type_hint")
        owner: tuple[UserID, str] | None = None
        if hint != "refresh_token":
            access = await self._account_store.get_token(token_hash)
            if access is not None:
                owner = (access.user_id, access.device_id)
        if owner is None:
            refresh = await self._account_store.get_refresh_token(token_hash)
            if refresh is not None and refresh.next_token_id is None:
                owner = (refresh.user_id, refresh.device_id)
        if owner is None:
            return
        # RFC 7009 section 2.1: the token must have been issued to the client revoking it.
        issued_to = await self._account_store.oauth_client_of_device(*owner)
        if issued_to is None or not _same(issued_to, form["client_id"]):
            raise OAuthError("unauthorized_client", "the token was issued to another client")
        await self._accounts.end_session(*owner)
        logger.info("OAuth session revoked", extra={"user_id": owner[0], "device_id": owner[1]})
