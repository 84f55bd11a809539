"""Single sign-on through upstream OpenID Connect providers (``m.login.sso``).

The flow: ``/login/sso/redirect`` starts a session (state, nonce, PKCE verifier; its ID in
a cookie) and sends the browser to the provider; the callback checks the state against the
session, exchanges the code, checks the ID token (signature by the provider's JWKS, issuer,
audience, nonce, expiry); a subject already linked gets a login token at once, a new one
chooses a username first. The client then logs in with ``m.login.token``.

User-interactive authentication's ``m.login.sso`` stage goes the same way from the fallback
page (``start_reauth``): the provider must name the account that is asking, and the UIA
session's stage is then complete.

Every request to a provider goes through ``net/outbound`` (docs/sign-in.md: the operator
chose these URLs, so loopback and private addresses are allowed).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from homeserver.accounts.service import AccountService
from homeserver.accounts.tokens import hash_token
from homeserver.accounts.uia import UiaService
from homeserver.core.clock import Clock
from homeserver.core.config import OidcProviderConfig, SsoConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID, is_valid_new_localpart
from homeserver.core.types import JsonDict
from homeserver.net.outbound import OutboundClient, OutboundError
from homeserver.oauth.service import s256
from homeserver.storage.sso import SsoSession, SsoStore

logger = logging.getLogger(__name__)

_BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
SESSION_LIFETIME_MS = 10 * 60 * 1000
LOGIN_TOKEN_LIFETIME_MS = 2 * 60 * 1000
# An SSO session's redirect_url for UIA re-authentication: this prefix, then the UIA session.
_UIA_REDIRECT = "uia:"
_MAX_DOCUMENT_BYTES = 256 * 1024
_ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of secrets; any text (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode(), expected.encode())


class SsoFailure(Exception):
    """Shown to the person in the browser (an error page), never a JSON answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Started:
    session_id: str  # the cookie's value
    location: str  # the provider's authorization URL


@dataclass(frozen=True, slots=True)
class Finished:
    location: str  # the client's redirectUrl with loginToken


@dataclass(frozen=True, slots=True)
class ChooseUsername:
    suggestion: str
    provider_name: str
    csrf: str
    destination: str  # the host the login token will go to
    redirect_url: str  # where the form's answer sends the browser (its CSP must allow it)


@dataclass(frozen=True, slots=True)
class ConfirmDestination:
    """A returning user is asked before a login token goes to the client's redirectUrl: a
    link someone else sent them must not hand their account to that someone."""

    user_id: str
    destination: str
    csrf: str
    redirect_url: str


@dataclass(frozen=True, slots=True)
class Reauthenticated:
    """UIA's ``m.login.sso`` stage is complete: the client may resubmit its request."""

    user_id: str


class SsoService:
    def __init__(
        self,
        config: SsoConfig,
        store: SsoStore,
        accounts: AccountService,
        http: OutboundClient,
        clock: Clock,
        base_url: str,
        server_name: str,
        *,
        uia: UiaService | None = None,
    ) -> None:
        self._uia = uia
        self._providers = {p.id: p for p in config.providers}
        self._store = store
        self._accounts = accounts
        self._http = http
        self._clock = clock
        self._server_name = server_name
        self.callback_url = f"{base_url}oauth2/upstream/callback"
        # Our own OAuth sign-in page asked for this sign-in: it checks its own CSRF cookie,
        # and its consent was given on it.
        self._own_authorize = f"{base_url}oauth2/authorize?"
        self._discovery: dict[str, JsonDict] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def provider(self, idp_id: str | None) -> OidcProviderConfig:
        if idp_id is None:
            if len(self._providers) == 1:
                return next(iter(self._providers.values()))
            raise MatrixError(Codes.INVALID_PARAM, "Name an identity provider", status=400)
        found = self._providers.get(idp_id)
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown identity provider")
        return found

    # --- talking to the provider -----------------------------------------------------------

    async def _get_json(self, url: str) -> JsonDict:
        try:
            response = await self._http.request("GET", url, max_bytes=_MAX_DOCUMENT_BYTES)
            body = response.json()
        except (OutboundError, ValueError) as e:
            raise SsoFailure(f"The identity provider could not be reached: {e}", 502) from e
        if response.status_code != 200 or not isinstance(body, dict):
            raise SsoFailure("The identity provider answered with an error", 502)
        return body

    async def _metadata(self, provider: OidcProviderConfig) -> JsonDict:
        cached = self._discovery.get(provider.id)
        if cached is not None:
            return cached
        url = provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
        meta = await self._get_json(url)
        if meta.get("issuer") != provider.issuer:
            raise SsoFailure("The identity provider's discovery names another issuer", 502)
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(meta.get(key), str):
                raise SsoFailure(f"The identity provider's discovery lacks {key}", 502)
        self._discovery[provider.id] = meta
        return meta

    # --- the redirect ----------------------------------------------------------------------

    async def start(self, idp_id: str | None, redirect_url: str) -> Started:
        provider = self.provider(idp_id)
        parts = urlsplit(redirect_url)
        if not parts.scheme or len(redirect_url) > 2048:
            raise MatrixError(Codes.INVALID_PARAM, "redirectUrl must be an absolute URL")
        if redirect_url.startswith(_UIA_REDIRECT):
            # Re-authentication starts on the fallback page only, which says what it is for.
            raise MatrixError(Codes.INVALID_PARAM, "redirectUrl must be an absolute URL")
        return await self._begin(provider, redirect_url)

    async def describe_reauth(self, uia_session: str) -> tuple[str, str, str]:
        """The fallback page's facts: the account, the request it confirms (method and
        path) and the name of the provider it signs in with."""
        user_id, request, provider = await self._reauth_provider(uia_session)
        return user_id, request, provider.name

    async def start_reauth(self, uia_session: str) -> Started:
        """The fallback page's button: to the account's provider, back to the callback."""
        _, _, provider = await self._reauth_provider(uia_session)
        return await self._begin(provider, _UIA_REDIRECT + uia_session)

    async def _reauth_provider(self, uia_session: str) -> tuple[UserID, str, OidcProviderConfig]:
        if self._uia is None:
            raise MatrixError(Codes.UNRECOGNIZED, "Single sign-on is not configured", status=404)
        user_id, request = await self._uia.sso_session(uia_session)
        providers = await self._uia.sso_providers_of(user_id)
        if not providers:
            raise MatrixError(
                Codes.FORBIDDEN, "This account has no single sign-on identity on this server"
            )
        return user_id, request, self._providers[providers[0]]

    async def _begin(self, provider: OidcProviderConfig, redirect_url: str) -> Started:
        try:
            meta = await self._metadata(provider)
        except SsoFailure as e:
            raise MatrixError(Codes.UNKNOWN, e.message, status=502) from e
        session_id = secrets.token_urlsafe(32)
        session = SsoSession(
            provider=provider.id,
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            code_verifier=secrets.token_urlsafe(48),
            redirect_url=redirect_url,
            claims=None,
            expires_ts=self._clock.now_ms() + SESSION_LIFETIME_MS,
        )
        await self._store.add_session(hash_token(session_id), session)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": provider.client_id,
                "redirect_uri": self.callback_url,
                "scope": " ".join(provider.scopes),
                "state": session.state,
                "nonce": session.nonce,
                "code_challenge": s256(session.code_verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = meta["authorization_endpoint"]
        separator = "&" if "?" in endpoint else "?"
        return Started(session_id, f"{endpoint}{separator}{query}")

    # --- the callback ----------------------------------------------------------------------

    async def _session(self, session_id: str | None) -> SsoSession:
        if not session_id:
            raise SsoFailure("No sign-in is in progress in this browser (no session cookie)")
        session = await self._store.get_session(hash_token(session_id))
        if session is None or session.expires_ts <= self._clock.now_ms():
            raise SsoFailure("This sign-in has expired; please start again")
        return session

    async def callback(
        self, session_id: str | None, params: dict[str, str]
    ) -> Finished | ChooseUsername | ConfirmDestination | Reauthenticated:
        session = await self._session(session_id)
        state = params.get("state", "")
        if not session.state or not _same(state, session.state):
            raise SsoFailure("The sign-in's state does not match: the request was forged")
        session_hash = hash_token(session_id or "")
        if "error" in params:
            await self._store.delete_session(session_hash)
            raise SsoFailure(f"The identity provider refused: {params['error'][:200]}", 403)
        code = params.get("code")
        if not code:
            raise SsoFailure("The identity provider gave no code")
        provider = self.provider(session.provider)
        claims = await self._claims(provider, session, code)
        subject = claims["sub"]
        user_id = await self._store.linked_user(provider.id, subject)
        if session.redirect_url.startswith(_UIA_REDIRECT):
            await self._store.delete_session(session_hash)
            return await self._reauthenticated(session.redirect_url, user_id)
        csrf = secrets.token_urlsafe(24)
        destination = urlsplit(session.redirect_url).netloc or session.redirect_url[:100]
        if user_id is not None:
            if session.redirect_url.startswith(self._own_authorize):
                await self._store.delete_session(session_hash)
                return await self._finish(session, UserID(user_id))
            await self._store.set_claims(
                session_hash, {**claims, "_csrf": csrf, "_user_id": user_id}
            )
            return ConfirmDestination(user_id, destination, csrf, session.redirect_url)
        await self._store.set_claims(session_hash, {**claims, "_csrf": csrf})
        suggestion = claims.get(provider.localpart_claim)
        return ChooseUsername(
            _localpart_suggestion(suggestion if isinstance(suggestion, str) else ""),
            provider.name,
            csrf,
            destination,
            session.redirect_url,
        )

    async def _reauthenticated(self, redirect_url: str, user_id: str | None) -> Reauthenticated:
        if user_id is None or self._uia is None:
            raise SsoFailure("This identity is not linked to an account on this server", 403)
        try:
            await self._uia.complete_sso(redirect_url[len(_UIA_REDIRECT) :], UserID(user_id))
        except MatrixError as e:
            raise SsoFailure(e.message, 403) from e
        logger.info("re-authenticated by single sign-on", extra={"user_id": user_id})
        return Reauthenticated(user_id)

    async def confirm(self, session_id: str | None, csrf: str) -> Finished:
        """The returning user said yes to the destination."""
        session, claims = await self.pending(session_id)
        if not _same(csrf, str(claims.get("_csrf", ""))):
            raise SsoFailure("This form has expired; please start again", 403)
        user_id = claims.get("_user_id")
        if not isinstance(user_id, str):
            raise SsoFailure("Nothing is waiting to be confirmed; please start again")
        await self._store.delete_session(hash_token(session_id or ""))
        return await self._finish(session, UserID(user_id))

    async def _claims(
        self, provider: OidcProviderConfig, session: SsoSession, code: str
    ) -> JsonDict:
        meta = await self._metadata(provider)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.callback_url,
            "client_id": provider.client_id,
            "code_verifier": session.code_verifier,
        }
        if provider.client_secret is not None:
            form["client_secret"] = provider.client_secret
        try:
            response = await self._http.request(
                "POST",
                meta["token_endpoint"],
                max_bytes=_MAX_DOCUMENT_BYTES,
                content=urlencode(form).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            tokens = response.json()
        except (OutboundError, ValueError) as e:
            raise SsoFailure(f"The identity provider could not be reached: {e}", 502) from e
        if response.status_code != 200 or not isinstance(tokens, dict):
            raise SsoFailure("The identity provider refused the code", 502)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SsoFailure("The identity provider gave no ID token", 502)
        claims = await self._check_id_token(provider, meta, session, id_token)
        userinfo_url = meta.get("userinfo_endpoint")
        access = tokens.get("access_token")
        if isinstance(userinfo_url, str) and isinstance(access, str):
            try:
                answer = await self._http.request(
                    "GET",
                    userinfo_url,
                    max_bytes=_MAX_DOCUMENT_BYTES,
                    headers={"Authorization": f"Bearer {access}"},
                )
                info = answer.json()
            except (OutboundError, ValueError) as e:
                raise SsoFailure(f"The identity provider could not be reached: {e}", 502) from e
            if answer.status_code == 200 and isinstance(info, dict):
                if info.get("sub") != claims["sub"]:
                    raise SsoFailure("The provider's user info is for another subject", 502)
                claims = {**info, **claims}
        self._check_email(provider, claims)
        return claims

    async def _check_id_token(
        self, provider: OidcProviderConfig, meta: JsonDict, session: SsoSession, id_token: str
    ) -> JsonDict:
        jwks = await self._get_json(meta["jwks_uri"])
        import jwt  # at the first OpenID sign-in, not at start-up (~15 MB with cryptography)

        try:
            key_set = jwt.PyJWKSet.from_dict(jwks)
            header = jwt.get_unverified_header(id_token)
            kid = header.get("kid")
            keys = [k for k in key_set.keys if kid is None or k.key_id == kid]
            if not keys:
                raise SsoFailure("The ID token's key is not in the provider's key set", 502)
            claims: JsonDict = jwt.decode(
                id_token,
                keys[0],
                algorithms=_ID_TOKEN_ALGORITHMS,
                audience=provider.client_id,
                issuer=provider.issuer,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError as e:
            raise SsoFailure(f"The ID token is not valid: {e}", 403) from e
        now_s = self._clock.now_ms() / 1000
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now_s - 60:
            raise SsoFailure("The ID token has expired", 403)
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not _same(nonce, session.nonce):
            raise SsoFailure("The ID token's nonce does not match this sign-in", 403)
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise SsoFailure("The ID token has no subject", 403)
        return claims

    def _check_email(self, provider: OidcProviderConfig, claims: JsonDict) -> None:
        if not provider.allowed_email_domains:
            return
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email or claims.get("email_verified") is False:
            raise SsoFailure("Your account at the identity provider has no verified e-mail", 403)
        domain = email.rsplit("@", 1)[1].lower()
        if domain not in {d.lower() for d in provider.allowed_email_domains}:
            raise SsoFailure("Accounts of this e-mail domain may not sign in here", 403)

    # --- back-channel logout (OpenID Connect Back-Channel Logout 1.0) ----------------------

    async def backchannel_logout(self, idp_id: str, logout_token: str) -> None:
        """The provider says the subject signed out: every session of the linked account
        ends (which device came from which provider session is not tracked)."""
        provider = self.provider(idp_id)
        meta = await self._metadata(provider)
        jwks = await self._get_json(meta["jwks_uri"])
        import jwt

        try:
            key_set = jwt.PyJWKSet.from_dict(jwks)
            kid = jwt.get_unverified_header(logout_token).get("kid")
            keys = [k for k in key_set.keys if kid is None or k.key_id == kid]
            if not keys:
                raise SsoFailure("The logout token's key is not in the provider's key set")
            claims: JsonDict = jwt.decode(
                logout_token,
                keys[0],
                algorithms=_ID_TOKEN_ALGORITHMS,
                audience=provider.client_id,
                issuer=provider.issuer,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError as e:
            raise SsoFailure(f"The logout token is not valid: {e}") from e
        events = claims.get("events")
        if not isinstance(events, dict) or _BACKCHANNEL_EVENT not in events:
            raise SsoFailure("The logout token has no back-channel logout event")
        if "nonce" in claims:
            raise SsoFailure("A logout token must not have a nonce")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or iat < self._clock.now_ms() / 1000 - 600:
            raise SsoFailure("The logout token is too old")
        subject = claims.get("sub")
        if not isinstance(subject, str):
            # A logout by session ID alone: sessions are not tracked by provider session.
            raise SsoFailure("The logout token has no subject")
        user_id = await self._store.linked_user(provider.id, subject)
        if user_id is None:
            return
        ended = await self._accounts.end_all_sessions(UserID(user_id))
        logger.info(
            "back-channel logout", extra={"user_id": user_id, "idp": provider.id, "ended": ended}
        )

    # --- choosing a username ---------------------------------------------------------------

    async def pending(self, session_id: str | None) -> tuple[SsoSession, JsonDict]:
        session = await self._session(session_id)
        if session.claims is None:
            raise SsoFailure("No username is waiting to be chosen; please start again")
        return session, session.claims

    async def choose_username(self, session_id: str | None, csrf: str, username: str) -> Finished:
        session, claims = await self.pending(session_id)
        if not _same(csrf, str(claims.get("_csrf", ""))):
            raise SsoFailure("This form has expired; please start again", 403)
        if "_user_id" in claims:
            raise SsoFailure("This identity has an account already; please start again")
        provider = self.provider(session.provider)
        displayname = claims.get(provider.displayname_claim or "")
        user_id = await self._accounts.create_sso_user(
            username, displayname if isinstance(displayname, str) else None
        )
        if not await self._store.link(provider.id, str(claims["sub"]), user_id):
            raise SsoFailure("This identity was linked to an account meanwhile; sign in again")
        await self._store.delete_session(hash_token(session_id or ""))
        logger.info("SSO identity linked", extra={"user_id": user_id, "idp": provider.id})
        return await self._finish(session, user_id)

    async def _finish(self, session: SsoSession, user_id: UserID) -> Finished:
        token = secrets.token_urlsafe(32)
        await self._store.add_login_token(
            hash_token(token), user_id, self._clock.now_ms() + LOGIN_TOKEN_LIFETIME_MS
        )
        separator = "&" if urlsplit(session.redirect_url).query else "?"
        query = urlencode({"loginToken": token})
        return Finished(f"{session.redirect_url}{separator}{query}")


def _localpart_suggestion(value: str) -> str:
    lowered = value.lower().split("@", 1)[0]
    kept = "".join(c for c in lowered if is_valid_new_localpart(c))
    return kept[:64]
