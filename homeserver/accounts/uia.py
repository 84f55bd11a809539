"""User-interactive authentication (spec: client-server API, "User-Interactive Authentication API").

An endpoint offers flows, each a list of stages; the client completes the stages of one flow in
order inside a session, resubmitting its request with an ``auth`` dict each time. A session is
bound to the method and path it was started for (and to the user who started it), so a session
completed for one request cannot authorise another; it is used up when the request succeeds.

Stages: ``m.login.dummy``, ``m.login.password``, ``m.login.registration_token`` and
``m.login.email.identity`` (a session validated by the homeserver's own mail).
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

# A session not finished within this time is forgotten (and its registration token use freed).
SESSION_LIFETIME_MS = 30 * 60 * 1000
# spec, "Token-authenticated registration": opaque identifier grammar, at most 64 characters.
_REGISTRATION_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{1,64}\Z")


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

    async def finish(self, result: UiaResult) -> None:
        """The protected request succeeded: use the session up and count its token's use."""
        session = await self._store.delete_session(result.session_id)
        if session is not None and session.params.get("token_in_db"):
            await self._tokens.complete(str(session.params["registration_token"]))
        if session is not None and session.params.get("threepid_sid"):
            # A validated mail authorises one request (one password reset), not several.
            await self._email_identity.use_session(str(session.params["threepid_sid"]))

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
            return Codes.FORBIDDEN, "The password is not the one of the logged-in user"
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
