"""User-interactive authentication (spec: client-server API, "User-Interactive Authentication API").

An endpoint offers flows, each a list of stages; the client completes the stages of one flow in
order inside a session, resubmitting its request with an ``auth`` dict each time. A session is
bound to the method and path it was started for (and to the user who started it), so a session
completed for one request cannot authorise another; it is used up when the request succeeds.

Stages: ``m.login.dummy``, ``m.login.password``, ``m.login.registration_token``,
``m.login.email.identity`` (a session validated by the homeserver's own mail) and
``m.login.sso`` (re-authentication with the account's single sign-on provider, through the
fallback page: ``accounts/sso.py``). Where a request asks a signed-in user for their password,
an account linked to a configured provider is offered ``m.login.sso`` too, and an account with
no password only that.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from homeserver.accounts.tokens import AuthService
from homeserver.core.clock import Clock
from homeserver.core.config import RegistrationConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import MAX_ID_BYTES, UserID
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.core.types import JsonDict
from homeserver.storage.accounts import AccountStore
from homeserver.storage.registration_tokens import RegistrationTokenStore
from homeserver.storage.uia import UiaSession, UiaStore

logger = logging.getLogger(__name__)

LOGIN_DUMMY = "m.login.dummy"
LOGIN_PASSWORD = "m.login.password"
LOGIN_REGISTRATION_TOKEN = "m.login.registration_token"
LOGIN_EMAIL_IDENTITY = "m.login.email.identity"
LOGIN_SSO = "m.login.sso"

# A session not finished within this time is forgotten (and its registration token use freed).
SESSION_LIFETIME_MS = 30 * 60 * 1000
# spec, "Token-authenticated registration": opaque identifier grammar, at most 64 characters.
_REGISTRATION_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{1,64}\Z")
# The session's params key under which a request's own parameters are remembered.
_REMEMBERED = "request"


def _remembered_of(session: UiaSession) -> JsonDict:
    value = session.params.get(_REMEMBERED)
    return dict(value) if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """A 401 asking for (more) authentication: flows, params, session, completed.

    Not an error: the body has no ``errcode`` (clients show one as a failed stage).
    """

    body: JsonDict


@dataclass(frozen=True, slots=True)
class UiaResult:
    """A completed flow: who ``m.login.password`` authenticated and which token was used."""

    session_id: str
    user_id: UserID | None
    registration_token: str | None


def parse_user_identifier(user: str, server_name: str) -> UserID | None:
    """``alice`` or ``@alice:server`` as a local user ID; None if it cannot be one of ours."""
    if user.startswith("@"):
        try:
            user_id = UserID.parse(user)
        except MatrixError:
            return None
        return user_id if user_id.server_name == server_name else None
    candidate = UserID.of(user, server_name)
    try:
        return UserID.parse(candidate)
    except MatrixError:
        return None


class EmailIdentity(Protocol):
    """The homeserver's e-mail validation (``ThreepidService``), as stages need it."""

    @property
    def enabled(self) -> bool:
        """Whether the server mails, so that a password can be reset by mail."""
        ...

    async def password_reset_owner(self, sid: str, client_secret: str) -> UserID:
        """The account a validated password-reset session is for; a ``MatrixError`` if the
        session is unknown, expired or not validated yet."""
        ...

    async def use_session(self, sid: str) -> None: ...

    async def owner_of(self, medium: str, address: str) -> UserID | None: ...


class SsoLinks(Protocol):
    """The single sign-on identities linked to accounts (``SsoStore``)."""

    async def providers_of_user(self, user_id: str) -> list[str]: ...


class UiaService:
    def __init__(
        self,
        store: UiaStore,
        accounts: AccountStore,
        registration_tokens: RegistrationTokenStore,
        auth: AuthService,
        ratelimiter: RateLimiter,
        clock: Clock,
        server_name: str,
        registration: RegistrationConfig,
        email_identity: EmailIdentity,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._tokens = registration_tokens
        self._auth = auth
        self._ratelimiter = ratelimiter
        self._clock = clock
        self._server_name = server_name
        self._registration = registration
        self._email_identity = email_identity
        self._sso_links: SsoLinks | None = None
        self._sso_providers: tuple[str, ...] = ()

    def use_single_sign_on(self, links: SsoLinks, provider_ids: Sequence[str]) -> None:
        """Offer ``m.login.sso`` to accounts linked to one of these (configured) providers."""
        self._sso_links = links
        self._sso_providers = tuple(provider_ids)

    async def sso_providers_of(self, user_id: UserID) -> list[str]:
        """The configured providers this account can re-authenticate with."""
        if self._sso_links is None:
            return []
        linked = await self._sso_links.providers_of_user(user_id)
        return [p for p in self._sso_providers if p in linked]

    async def _flows_for(
        self, flows: Sequence[Sequence[str]], requester: UserID | None
    ) -> list[list[str]]:
        """A signed-in user asked for their password: the ways this account can prove itself
        (its password if it has one; single sign-on if it is linked to a provider)."""
        out = [list(flow) for flow in flows]
        if requester is None or [LOGIN_PASSWORD] not in out:
            return out
        if not await self.sso_providers_of(requester):
            return out
        account = await self._accounts.get_user(requester)
        if account is None or account.password_hash is None:
            out = [flow for flow in out if flow != [LOGIN_PASSWORD]]
        return [*out, [LOGIN_SSO]]

    async def authenticate(
        self,
        auth: JsonDict | None,
        flows: Sequence[Sequence[str]],
        fingerprint: str,
        *,
        requester: UserID | None = None,
    ) -> UiaResult | AuthChallenge:
        """Run the stage in ``auth``; a result once a flow is complete, else a challenge.

        ``fingerprint`` names the request (method and path); ``requester`` is the user of the
        access token, if any: ``m.login.password`` must then authenticate that same user.
        A failed stage raises a 401 ``MatrixError`` carrying the challenge.
        """
        flows = await self._flows_for(flows, requester)
        if auth is None:
            return self._challenge(flows, await self._new_session(fingerprint, requester))
        stage = auth.get("type")
        session_id = auth.get("session")
        if stage is not None and not isinstance(stage, str):
            raise MatrixError(Codes.BAD_JSON, "auth.type must be a string")
        if session_id is not None and not isinstance(session_id, str):
            raise MatrixError(Codes.BAD_JSON, "auth.session must be a string")
        if session_id is None:
            # No session yet: the client went straight to a stage; start one for it.
            session = await self._new_session(fingerprint, requester)
        else:
            session = await self._get_session(session_id)
            if session.request_fingerprint != fingerprint:
                raise MatrixError(
                    Codes.FORBIDDEN, "The authentication session was started for another request"
                )
            if session.params.get("requester") != requester:
                raise MatrixError(
                    Codes.FORBIDDEN, "The authentication session belongs to another user"
                )
        completed = list(session.completed)
        params = dict(session.params)
        if stage is not None and stage not in completed:
            # spec: a flow's stages are completed in order; anything else is a 401.
            if not any(list(flow[: len(completed) + 1]) == [*completed, stage] for flow in flows):
                raise self._failure(
                    flows,
                    session,
                    Codes.FORBIDDEN,
                    f"Authentication stage {stage} is not expected now",
                )
            failure = await self._run_stage(stage, auth, params, requester)
            if failure is not None:
                raise self._failure(flows, session, *failure)
            completed.append(stage)
            session = UiaSession(
                session.session_id,
                session.created_ts,
                completed,
                params,
                session.request_fingerprint,
            )
            await self._store.update_session(session.session_id, completed, params)
        if any(list(flow) == completed for flow in flows):
            user = params.get("user_id")
            return UiaResult(
                session.session_id, UserID(user) if user else None, params.get("registration_token")
            )
        return self._challenge(flows, session)

    # --- single sign-on (the fallback page) ------------------------------------------------

    async def sso_session(self, session_id: str) -> tuple[UserID, str]:
        """The user who must re-authenticate in this session, and the request it is for."""
        session = await self._get_session(session_id)
        requester = session.params.get("requester")
        if not requester:
            raise MatrixError(
                Codes.FORBIDDEN, "Single sign-on confirms the identity of a signed-in user only"
            )
        return UserID(requester), session.request_fingerprint

    async def complete_sso(self, session_id: str, user_id: UserID) -> None:
        """The user re-authenticated with their provider: the session's ``m.login.sso``
        stage is complete (the client then resubmits its request with the session)."""
        session = await self._get_session(session_id)
        if session.params.get("requester") != user_id:
            raise MatrixError(
                Codes.FORBIDDEN, "You signed in as another account than the one asking"
            )
        if LOGIN_SSO not in session.completed:
            completed = [*session.completed, LOGIN_SSO]
            await self._store.update_session(session.session_id, completed, session.params)

    async def finish(self, result: UiaResult, *, keep: JsonDict | None = None) -> None:
        """The protected request succeeded: use the session up and count its token's use.

        With ``keep`` the session stays (until it expires) with ``keep`` added to what it
        remembers of the request: a registration answers the same request again with the
        same account (``remembered``) instead of failing."""
        if keep is None:
            session = await self._store.delete_session(result.session_id)
        else:
            session = await self._store.get_session(result.session_id)
        if session is not None and session.params.get("token_in_db"):
            await self._tokens.complete(str(session.params["registration_token"]))
        if session is not None and session.params.get("threepid_sid"):
            # A validated mail authorises one request (one password reset), not several.
            await self._email_identity.use_session(str(session.params["threepid_sid"]))
        if session is not None and keep is not None:
            params = {k: v for k, v in session.params.items() if k != "token_in_db"}
            params[_REMEMBERED] = {**_remembered_of(session), **keep}
            await self._store.update_session(session.session_id, session.completed, params)

    async def remembered(self, auth: JsonDict | None, fingerprint: str) -> JsonDict:
        """What earlier requests of the session in ``auth`` left (``remember``): the
        parameters a client need not send again. Empty without a session, or for a session
        of another request or a user's (registration's sessions have no requester)."""
        session_id = auth.get("session") if auth is not None else None
        if not isinstance(session_id, str):
            return {}
        session = await self._store.get_session(session_id)
        if (
            session is None
            or session.request_fingerprint != fingerprint
            or session.params.get("requester") is not None
            or self._clock.now_ms() - session.created_ts > SESSION_LIFETIME_MS
        ):
            return {}
        return _remembered_of(session)

    async def remember(self, session_id: str, values: JsonDict) -> None:
        """Keep request parameters in the session for its later requests."""
        session = await self._store.get_session(session_id)
        if session is None:
            return
        params = dict(session.params)
        params[_REMEMBERED] = {**_remembered_of(session), **values}
        await self._store.update_session(session.session_id, session.completed, params)

    # --- registration tokens ---------------------------------------------------------------

    async def registration_token_possible(self) -> bool:
        """Whether some registration token could be used now (static or in the database)."""
        if self._registration.tokens:
            return True
        return await self._tokens.any_usable(self._clock.now_ms())

    async def registration_token_valid(self, token: str) -> bool:
        if self._is_static_token(token):
            return True
        if not _REGISTRATION_TOKEN.match(token):
            return False
        return await self._tokens.is_usable(token, self._clock.now_ms())

    async def registration_token_known(self, token: str) -> bool:
        """Whether the token exists at all, usable or not."""
        return self._is_static_token(token) or await self._tokens.get_token(token) is not None

    def _is_static_token(self, token: str) -> bool:
        # Compare every configured token in constant time: the result must not leak a prefix.
        found = False
        for candidate in self._registration.tokens:
            found |= secrets.compare_digest(candidate.encode(), token.encode())
        return found

    # --- sessions and stages ---------------------------------------------------------------

    async def _new_session(self, fingerprint: str, requester: UserID | None) -> UiaSession:
        now = self._clock.now_ms()
        await self._purge_expired(now)
        session = UiaSession(
            secrets.token_urlsafe(24), now, [], {"requester": requester}, fingerprint
        )
        await self._store.create_session(session.session_id, now, fingerprint, session.params)
        return session

    async def _get_session(self, session_id: str) -> UiaSession:
        session = await self._store.get_session(session_id)
        if session is None or self._clock.now_ms() - session.created_ts > SESSION_LIFETIME_MS:
            raise MatrixError(
                Codes.UNKNOWN, "Unknown or expired authentication session", status=400
            )
        return session

    async def _purge_expired(self, now: int) -> None:
        for session in await self._store.delete_sessions_before(now - SESSION_LIFETIME_MS):
            if session.params.get("token_in_db"):
                await self._tokens.release(str(session.params["registration_token"]))

    async def _run_stage(
        self, stage: str, auth: JsonDict, params: dict[str, Any], requester: UserID | None
    ) -> tuple[Codes, str] | None:
        """Complete one stage, recording what it established in ``params``; or why not."""
        if stage == LOGIN_DUMMY:
            return None
        if stage == LOGIN_PASSWORD:
            return await self._password_stage(auth, params, requester)
        if stage == LOGIN_REGISTRATION_TOKEN:
            return await self._registration_token_stage(auth, params)
        if stage == LOGIN_EMAIL_IDENTITY:
            return await self._email_identity_stage(auth, params, requester)
        if stage == LOGIN_SSO:
            # Completed only by the provider, through the fallback page (complete_sso).
            return (
                Codes.UNAUTHORIZED,
                "Confirm your identity with single sign-on first: open "
                "/_matrix/client/v3/auth/m.login.sso/fallback/web?session=<session>",
            )
        return Codes.FORBIDDEN, f"Unsupported authentication stage {stage}"

    async def _email_identity_stage(
        self, auth: JsonDict, params: dict[str, Any], requester: UserID | None
    ) -> tuple[Codes, str] | None:
        """spec: ``threepid_creds`` names a session the homeserver validated by mail (the
        identity server fields are ignored: we are our own). It establishes the address's
        owner; a session still waiting for its link fails with M_UNAUTHORIZED, which clients
        retry once the user has opened the link."""
        creds = auth.get("threepid_creds", auth.get("threePidCreds"))  # the latter: legacy
        if creds is None:
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: auth.threepid_creds")
        if not isinstance(creds, dict):
            raise MatrixError(Codes.BAD_JSON, "auth.threepid_creds must be an object")
        sid, secret = creds.get("sid"), creds.get("client_secret")
        if sid is None or secret is None:
            raise MatrixError(
                Codes.MISSING_PARAM,
                "Missing parameter: auth.threepid_creds."
                + ("sid" if sid is None else "client_secret"),
            )
        if not isinstance(sid, str) or not isinstance(secret, str):
            raise MatrixError(
                Codes.BAD_JSON, "auth.threepid_creds.sid and client_secret must be strings"
            )
        try:
            owner = await self._email_identity.password_reset_owner(sid, secret)
        except MatrixError as e:
            return e.code, e.message
        account = await self._accounts.get_user(owner)
        if account is None or account.deactivated:
            return Codes.USER_DEACTIVATED, "This account has been deactivated"
        if requester is not None and owner != requester:
            return Codes.FORBIDDEN, "The e-mail address is not one of the logged-in user"
        params["user_id"] = owner
        params["threepid_sid"] = sid
        return None

    async def _password_stage(
        self, auth: JsonDict, params: dict[str, Any], requester: UserID | None
    ) -> tuple[Codes, str] | None:
        user = auth.get("user")  # deprecated form, before identifiers
        identifier = auth.get("identifier")
        if identifier is not None:
            if not isinstance(identifier, dict):
                raise MatrixError(Codes.BAD_JSON, "auth.identifier must be an object")
            if identifier.get("type") == "m.id.thirdparty":
                medium, address = identifier.get("medium"), identifier.get("address")
                if not isinstance(medium, str) or not isinstance(address, str):
                    raise MatrixError(
                        Codes.BAD_JSON, "auth.identifier.medium and address must be strings"
                    )
                owner = await self._email_identity.owner_of(medium, address)
                if owner is None:
                    return Codes.FORBIDDEN, "Invalid username or password"  # spec: 403
                user = owner
            elif identifier.get("type") != "m.id.user":
                return Codes.FORBIDDEN, "Unknown identifier"
            else:
                user = identifier.get("user")
        if user is None:
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: auth.identifier.user")
        password = auth.get("password")
        if password is None:
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: auth.password")
        if not isinstance(user, str) or not isinstance(password, str):
            raise MatrixError(
                Codes.BAD_JSON, "auth.identifier.user and auth.password must be strings"
            )
        user_id = parse_user_identifier(user, self._server_name)
        if user_id is None or len(user_id.encode()) > MAX_ID_BYTES:
            return Codes.FORBIDDEN, "Invalid username or password"
        await self._ratelimiter.check(Action.LOGIN, f"user:{user_id.lower()}")
        account = await self._accounts.get_user_case_insensitive(user_id)
        if (
            account is None
            or account.deactivated
            or not await self._auth.check_password(account.password_hash, password)
        ):
            return Codes.FORBIDDEN, "Invalid username or password"
        if requester is not None and account.user_id != requester:
            # Right password, wrong account: not a failed stage to retry but a refusal, 403
            # without a new challenge (as Synapse).
            raise MatrixError(
                Codes.FORBIDDEN, "The password is not the one of the logged-in user", status=403
            )
        params["user_id"] = account.user_id
        return None

    async def _registration_token_stage(
        self, auth: JsonDict, params: dict[str, Any]
    ) -> tuple[Codes, str] | None:
        token = auth.get("token")
        if token is None:
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: auth.token")
        if not isinstance(token, str):
            raise MatrixError(Codes.BAD_JSON, "auth.token must be a string")
        if self._is_static_token(token):
            params["registration_token"] = token
            return None
        if _REGISTRATION_TOKEN.match(token) and await self._tokens.reserve(
            token, self._clock.now_ms()
        ):
            # The use stays pending until the registration succeeds (``finish``) or the
            # session expires (``_purge_expired``), so a token's last use cannot go twice.
            params["registration_token"] = token
            params["token_in_db"] = True
            return None
        return Codes.UNAUTHORIZED, "Invalid registration token"

    # --- responses -------------------------------------------------------------------------

    def _challenge_body(self, flows: Sequence[Sequence[str]], session: UiaSession) -> JsonDict:
        return {
            "flows": [{"stages": list(flow)} for flow in flows],
            "params": {},
            "session": session.session_id,
            "completed": list(session.completed),
        }

    def _challenge(self, flows: Sequence[Sequence[str]], session: UiaSession) -> AuthChallenge:
        return AuthChallenge(self._challenge_body(flows, session))

    def _failure(
        self, flows: Sequence[Sequence[str]], session: UiaSession, code: Codes, message: str
    ) -> MatrixError:
        # spec: a failed attempt the client may retry is the challenge plus errcode and error.
        return MatrixError(code, message, status=401, **self._challenge_body(flows, session))
