"""Accounts: registration, login, logout, passwords, deactivation and devices.

Routes hand in plain values; the UIA-protected operations return an ``AuthChallenge`` while
the client still has stages to complete (rendered as a 401 without ``errcode``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from homeserver.accounts.jwt_login import LOGIN_JWT, JwtLogin
from homeserver.accounts.login_tokens import LOGIN_TOKEN, LoginTokens
from homeserver.accounts.tokens import AuthService, Session, new_device_id
from homeserver.accounts.uia import (
    LOGIN_DUMMY,
    LOGIN_EMAIL_IDENTITY,
    LOGIN_PASSWORD,
    LOGIN_REGISTRATION_TOKEN,
    AuthChallenge,
    EmailIdentity,
    UiaService,
    parse_user_identifier,
)
from homeserver.appservice.registration import AppService, AppServices
from homeserver.core.clock import Clock
from homeserver.core.config import RegistrationConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import (
    MAX_DEVICE_ID_BYTES,
    MAX_ID_BYTES,
    UserID,
    is_valid_device_id,
    is_valid_new_localpart,
)
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.accounts import AccountStore, Device

logger = logging.getLogger(__name__)

# argon2 takes any length, but a megabyte "password" is only a way to burn CPU.
MAX_PASSWORD_BYTES = 512
MAX_DEVICE_DISPLAY_NAME_CHARS = 256
_GENERATED_LOCALPART_ATTEMPTS = 10

PASSWORD_FLOWS: list[list[str]] = [[LOGIN_PASSWORD]]
# spec: application services register and log in their users with their as_token.
LOGIN_APPLICATION_SERVICE = "m.login.application_service"


class UserData(Protocol):
    """A service that keeps something for an account and lets go of it when the account is
    deactivated (its rooms, its e-mail addresses)."""

    async def deactivate_user(self, user_id: UserID) -> None: ...


class DeviceData(Protocol):
    """A service that keeps something per device, deleted with the device (its keys, its
    to-device messages, its pushers)."""

    async def delete_for_devices(self, user_id: UserID, device_ids: list[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    username: str | None
    password: str | None
    device_id: str | None
    initial_device_display_name: str | None
    inhibit_login: bool
    refresh_token: bool
    auth: JsonDict | None
    client_ip: str | None
    login_type: str | None = None  # the body's ``type``: m.login.application_service
    as_token: str | None = None  # the access token sent with m.login.application_service
    # The owner of ``guest_access_token``: registering upgrades this guest account.
    guest: Requester | None = None


@dataclass(frozen=True, slots=True)
class Registered:
    user_id: UserID
    session: Session | None  # None with ``inhibit_login``


@dataclass(frozen=True, slots=True)
class LoginRequest:
    login_type: str
    identifier_type: str | None  # from ``identifier``; None when it is absent
    user: str | None  # ``identifier.user``, or the deprecated top-level ``user``
    # ``identifier.medium``/``address`` of m.id.thirdparty, or the deprecated top-level ones
    medium: str | None
    address: str | None
    password: str | None
    device_id: str | None
    initial_device_display_name: str | None
    refresh_token: bool
    client_ip: str | None
    as_token: str | None = None  # the access token sent with m.login.application_service
    token: str | None = None  # the body's ``token``: m.login.token, org.matrix.login.jwt


LOGIN_SSO = "m.login.sso"


class AccountService:
    def __init__(
        self,
        store: AccountStore,
        auth: AuthService,
        uia: UiaService,
        ratelimiter: RateLimiter,
        clock: Clock,
        server_name: str,
        registration: RegistrationConfig,
        email_identity: EmailIdentity,
        *,
        user_data: Sequence[UserData] = (),
        device_data: Sequence[DeviceData] = (),
        appservices: AppServices | None = None,
        jwt_login: JwtLogin | None = None,
        password_login: bool = True,
        login_tokens: LoginTokens | None = None,
        sso_providers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._login_tokens = login_tokens
        self._sso_providers = tuple(sso_providers)
        self._store = store
        self._jwt_login = jwt_login
        self._password_login = password_login
        self._appservices = appservices or AppServices(())
        self._auth = auth
        self._uia = uia
        self._ratelimiter = ratelimiter
        self._clock = clock
        self._server_name = server_name
        self._registration = registration
        # The e-mail addresses bound to accounts: login by address, password reset by mail.
        self._email_identity = email_identity
        self._user_data = tuple(user_data)
        self._device_data = tuple(device_data)

    # --- registration ----------------------------------------------------------------------

    async def registration_flows(self, *, in_session: bool = False) -> list[list[str]]:
        """The flows /register offers; ``M_FORBIDDEN`` when nobody could register now.

        ``in_session``: the client continues a session, which may hold the last use of a
        token (reserved by its completed stage), so tokens still count as possible.
        """
        if self._registration.enabled and not self._registration.require_token:
            return [[LOGIN_DUMMY]]
        if in_session or await self._uia.registration_token_possible():
            return [[LOGIN_REGISTRATION_TOKEN]]
        raise MatrixError(Codes.FORBIDDEN, "Registration is disabled")

    async def register(
        self, request: RegistrationRequest, fingerprint: str
    ) -> Registered | AuthChallenge:
        if request.login_type == LOGIN_APPLICATION_SERVICE:
            return await self._register_app_service_user(request)
        if request.client_ip is not None:
            await self._ratelimiter.check(Action.REGISTRATION, f"ip:{request.client_ip}")
        flows = await self.registration_flows(
            in_session=request.auth is not None and request.auth.get("session") is not None
        )
        # The parameters of the session's first request hold for its later ones, which may
        # send only ``auth`` (as Synapse; clients such as SyTest's rely on it).
        remembered = await self._uia.remembered(request.auth, fingerprint)
        if remembered.get("registered_user_id") is not None:
            return await self._register_again(request, flows, fingerprint, remembered)
        password_hash = remembered.get("password_hash")
        request = replace(
            request,
            inhibit_login=request.inhibit_login or remembered.get("inhibit_login") is True,
            username=_first_str(request.username, remembered.get("username")),
            device_id=_first_str(request.device_id, remembered.get("device_id")),
            initial_device_display_name=_first_str(
                request.initial_device_display_name,
                remembered.get("initial_device_display_name"),
            ),
        )
        # spec: the user ID and password are checked before user-interactive authentication.
        user_id = None
        guest = request.guest
        if guest is not None:
            if not guest.is_guest:
                raise MatrixError(Codes.FORBIDDEN, "guest_access_token is not a guest's token")
            # spec (guest access): the guest's account is upgraded, and keeps its user ID.
            if request.username is not None and request.username.lower() != guest.user_id.localpart:
                raise MatrixError(
                    Codes.INVALID_PARAM, "An upgraded guest keeps its user ID: omit username"
                )
            user_id = guest.user_id
        elif request.username is not None:
            user_id = self._new_user_id(request.username)
            self._check_not_exclusive(user_id)
            if await self._store.user_exists_ignoring_case(user_id):
                raise MatrixError(Codes.USER_IN_USE, "User ID already taken")
        if request.password is not None:
            self.check_password_strength(request.password)
        elif request.auth is not None and not isinstance(password_hash, str):
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: password")
        self._check_device(request.device_id, request.initial_device_display_name)
        result = await self._uia.authenticate(request.auth, flows, fingerprint)
        if isinstance(result, AuthChallenge):
            session_id = result.body.get("session")
            if isinstance(session_id, str) and guest is None:
                remember: JsonDict = {
                    "username": request.username,
                    "device_id": request.device_id,
                    "initial_device_display_name": request.initial_device_display_name,
                    "inhibit_login": request.inhibit_login or None,
                }
                if request.password is not None:
                    remember["password_hash"] = await self._auth.hash_password(request.password)
                await self._uia.remember(
                    session_id, {k: v for k, v in remember.items() if v is not None}
                )
            return result
        if request.password is not None:
            password_hash = await self._auth.hash_password(request.password)
        assert isinstance(password_hash, str)  # checked above: ``auth`` was given
        if guest is not None and user_id is not None:
            if not await self._store.upgrade_guest(user_id, password_hash):
                raise MatrixError(Codes.USER_IN_USE, "This guest account was upgraded already")
            await self._auth.forget_user_cache(user_id)
        elif user_id is None:
            user_id = await self._create_generated_user(password_hash)
        elif not await self._create_user(user_id, password_hash, is_admin=False):
            # Taken while the client was authenticating; the session stays for another try.
            raise MatrixError(Codes.USER_IN_USE, "User ID already taken")
        await self._uia.finish(result, keep={"registered_user_id": str(user_id)})
        logger.info("user registered", extra={"user_id": user_id})
        if request.inhibit_login:
            return Registered(user_id, None)
        session = await self._start_session(
            user_id,
            request.device_id,
            request.initial_device_display_name,
            refreshable=request.refresh_token,
            client_ip=request.client_ip,
        )
        return Registered(user_id, session)

    async def _register_again(
        self,
        request: RegistrationRequest,
        flows: Sequence[Sequence[str]],
        fingerprint: str,
        remembered: JsonDict,
    ) -> Registered | AuthChallenge:
        """A registration repeated in its completed session: the account it made, signed
        in again (the first answer may have been lost), as Synapse answers."""
        result = await self._uia.authenticate(request.auth, flows, fingerprint)
        if isinstance(result, AuthChallenge):
            return result
        user_id = UserID.parse(str(remembered["registered_user_id"]))
        if request.username is not None and request.username.lower() != user_id.localpart:
            raise MatrixError(
                Codes.UNKNOWN,
                "This authentication session registered another account",
                status=400,
            )
        account = await self._store.get_user(user_id)
        if account is None or account.deactivated:
            raise MatrixError(Codes.FORBIDDEN, "This registration session is used up")
        if request.inhibit_login or remembered.get("inhibit_login") is True:
            return Registered(user_id, None)
        device_id = _first_str(request.device_id, remembered.get("device_id"))
        display_name = _first_str(
            request.initial_device_display_name, remembered.get("initial_device_display_name")
        )
        self._check_device(device_id, display_name)
        session = await self._start_session(
            user_id,
            device_id,
            display_name,
            refreshable=request.refresh_token,
            client_ip=request.client_ip,
        )
        return Registered(user_id, session)

    async def register_guest(
        self, initial_device_display_name: str | None, client_ip: str | None
    ) -> Registered:
        """spec: POST /register?kind=guest: an account without a password, limited to what
        guests may do, until it is upgraded by a registration with its token."""
        if not self._registration.allow_guest_access:
            raise MatrixError(Codes.GUEST_ACCESS_FORBIDDEN, "Guest access is disabled")
        if client_ip is not None:
            await self._ratelimiter.check(Action.REGISTRATION, f"ip:{client_ip}")
        self._check_device(None, initial_device_display_name)
        for _ in range(_GENERATED_LOCALPART_ATTEMPTS):
            # Numeric localparts, as Synapse's guests have: no user could have chosen one.
            user_id = UserID.of(str(secrets.randbelow(10**12)), self._server_name)
            created = await self._store.create_user(
                user_id,
                None,
                is_admin=False,
                created_ts=self._clock.now_ms(),
                displayname=None,
                is_guest=True,
            )
            if created:
                break
        else:
            raise MatrixError(Codes.UNKNOWN, "Could not generate a free user ID")
        session = await self._start_session(
            user_id,
            None,
            initial_device_display_name,
            refreshable=False,
            client_ip=client_ip,
        )
        logger.info("guest registered", extra={"user_id": user_id})
        return Registered(user_id, session)

    async def check_username_available(self, username: str, client_ip: str | None) -> None:
        """Nothing if ``username`` could be registered now; ``M_USER_IN_USE`` etc. otherwise."""
        if client_ip is not None:
            await self._ratelimiter.check(Action.REGISTRATION, f"available:{client_ip}")
        user_id = self._new_user_id(username)
        self._check_not_exclusive(user_id)
        if await self._store.user_exists_ignoring_case(user_id):
            raise MatrixError(Codes.USER_IN_USE, "User ID already taken")

    def _check_not_exclusive(self, user_id: UserID) -> None:
        if self._appservices.exclusive_owner_of_user(user_id) is not None:
            raise MatrixError(Codes.EXCLUSIVE, "This user ID is reserved by an application service")

    def _app_service_of(self, as_token: str | None) -> AppService:
        if as_token is None:
            raise MatrixError(Codes.MISSING_TOKEN, "m.login.application_service needs the as_token")
        service = self._auth.app_service_of_token(as_token)
        if service is None:
            raise MatrixError(
                Codes.UNKNOWN_TOKEN, "Not an application service token", soft_logout=False
            )
        return service

    async def _register_app_service_user(self, request: RegistrationRequest) -> Registered:
        """spec: an application service registers users of its namespaces with its as_token,
        without user-interactive authentication, even with registration closed."""
        service = self._app_service_of(request.as_token)
        if request.username is None:
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: username")
        user_id = self._new_user_id(request.username)
        if not service.is_user_in_namespace(user_id):
            raise MatrixError(
                Codes.EXCLUSIVE, "This user ID is not in the application service's namespaces"
            )
        self._check_device(request.device_id, request.initial_device_display_name)
        taken = await self._store.user_exists_ignoring_case(user_id)
        if taken or not await self._store.create_user(
            user_id,
            None,
            is_admin=False,
            created_ts=self._clock.now_ms(),
            displayname=user_id.localpart,
        ):
            raise MatrixError(Codes.USER_IN_USE, "User ID already taken")
        logger.info(
            "user registered by an application service",
            extra={"user_id": user_id, "app_service": service.id},
        )
        if request.inhibit_login:
            return Registered(user_id, None)
        session = await self._start_session(
            user_id,
            request.device_id,
            request.initial_device_display_name,
            refreshable=request.refresh_token,
            client_ip=request.client_ip,
        )
        return Registered(user_id, session)

    async def ensure_app_service_senders(self) -> None:
        """Each service's sender exists as a user (created at start-up, without a password)."""
        for service in self._appservices.all:
            if await self._store.get_user(service.sender) is None:
                await self._store.create_user(
                    service.sender,
                    None,
                    is_admin=False,
                    created_ts=self._clock.now_ms(),
                    displayname=service.sender.localpart,
                )

    async def registration_token_validity(self, token: str, client_ip: str | None) -> bool:
        # spec: rate-limited against brute force.
        if client_ip is not None:
            await self._ratelimiter.check(Action.REGISTRATION, f"token-validity:{client_ip}")
        if await self._uia.registration_token_valid(token):
            return True
        open_to_all = self._registration.enabled and not self._registration.require_token
        if (
            not open_to_all
            and not await self._uia.registration_token_possible()
            and not await self._uia.registration_token_known(token)
        ):
            # spec: 403 where registration is closed, so every token is invalid. A known but
            # used-up or expired token is rather reported invalid: it tells its holder why.
            raise MatrixError(Codes.FORBIDDEN, "Registration is disabled")
        return False

    async def register_user_admin(self, localpart: str, password: str, admin: bool) -> UserID:
        """Create an account from the command line (``homeserver register-user``)."""
        user_id = self._new_user_id(localpart)
        self.check_password_strength(password)
        if await self._store.user_exists_ignoring_case(user_id) or not await self._create_user(
            user_id, await self._auth.hash_password(password), is_admin=admin
        ):
            raise MatrixError(Codes.USER_IN_USE, "User ID already taken")
        logger.info("user registered by an administrator", extra={"user_id": user_id})
        return user_id

    def check_password_strength(self, password: str) -> None:
        if len(password) < self._registration.min_password_length:
            raise MatrixError(
                Codes.WEAK_PASSWORD,
                "Password must be at least "
                f"{self._registration.min_password_length} characters long",
            )
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise MatrixError(
                Codes.INVALID_PARAM, f"Password is longer than {MAX_PASSWORD_BYTES} bytes"
            )

    def _new_user_id(self, username: str) -> UserID:
        # spec: a server maps a username onto the grammar or refuses it; upper case maps to
        # lower case (user IDs are case-insensitive in practice), anything else is refused.
        # Only ASCII is lowered: str.lower maps some other letters onto ASCII (the Kelvin
        # sign onto "k"), which would give one user ID to two different names.
        localpart = username.lower() if username.isascii() else username
        if not localpart or not is_valid_new_localpart(localpart):
            raise MatrixError(
                Codes.INVALID_USERNAME,
                "User ID may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'",
            )
        user_id = UserID.of(localpart, self._server_name)
        if len(user_id.encode()) > MAX_ID_BYTES:
            raise MatrixError(
                Codes.INVALID_USERNAME, f"User ID is longer than {MAX_ID_BYTES} bytes"
            )
        return user_id

    async def _create_user(
        self,
        user_id: UserID,
        password_hash: str | None,
        *,
        is_admin: bool,
        displayname: str | None = None,
    ) -> bool:
        return await self._store.create_user(
            user_id,
            password_hash,
            is_admin=is_admin,
            created_ts=self._clock.now_ms(),
            displayname=displayname or user_id.localpart,
        )

    async def _create_generated_user(self, password_hash: str) -> UserID:
        # spec: without ``username`` the server picks the localpart.
        for _ in range(_GENERATED_LOCALPART_ATTEMPTS):
            user_id = UserID.of(f"user-{secrets.token_hex(5)}", self._server_name)
            if await self._create_user(user_id, password_hash, is_admin=False):
                return user_id
        raise MatrixError(Codes.UNKNOWN, "Could not generate a free user ID")

    # --- login, logout, refresh ------------------------------------------------------------

    def login_flows(self) -> list[JsonDict]:
        flows: list[JsonDict] = []
        if self._password_login:
            flows.append({"type": LOGIN_PASSWORD})
        if self._jwt_login is not None:
            flows.append({"type": LOGIN_JWT})
        if self._sso_providers:
            providers = [{"id": i, "name": n} for i, n in self._sso_providers]
            flows.append({"type": LOGIN_SSO, "identity_providers": providers})
        if self._accepts_login_tokens():
            flow: JsonDict = {"type": LOGIN_TOKEN}
            if self._login_tokens is not None and self._login_tokens.enabled:
                flow["get_login_token"] = True
            flows.append(flow)
        if self._appservices:
            flows.append({"type": LOGIN_APPLICATION_SERVICE})
        return flows

    def _accepts_login_tokens(self) -> bool:
        """m.login.token: tokens come from POST /login/get_token (when enabled) and from
        single sign-on (when a provider is configured); both are kept in one store."""
        return self._login_tokens is not None and (
            self._login_tokens.enabled or bool(self._sso_providers)
        )

    async def login(self, request: LoginRequest) -> Session:
        if request.login_type == LOGIN_APPLICATION_SERVICE:
            return await self._login_app_service_user(request)
        if request.client_ip is not None:
            await self._ratelimiter.check(Action.LOGIN, f"ip:{request.client_ip}")
        if request.login_type == LOGIN_JWT and self._jwt_login is not None:
            return await self._login_jwt(self._jwt_login, request)
        if request.login_type == LOGIN_TOKEN and self._accepts_login_tokens():
            return await self._login_with_token(request)
        if request.login_type != LOGIN_PASSWORD or not self._password_login:
            raise MatrixError(Codes.UNKNOWN, f"Unknown login type {request.login_type}", status=400)
        if request.identifier_type == "m.id.phone":
            # No phone number is ever bound to an account here (spec: unknown 3PID: 403).
            raise MatrixError(Codes.FORBIDDEN, "Unknown third-party identifier")
        third_party = request.identifier_type == "m.id.thirdparty" or (
            request.identifier_type is None
            and request.user is None
            and (request.medium is not None or request.address is not None)
        )
        if request.identifier_type not in (None, "m.id.user", "m.id.thirdparty"):
            raise MatrixError(
                Codes.UNKNOWN, f"Unknown identifier type {request.identifier_type}", status=400
            )
        if third_party:
            for name in ("medium", "address"):
                if getattr(request, name) is None:
                    where = f"identifier.{name}" if request.identifier_type else name
                    raise MatrixError(Codes.MISSING_PARAM, f"Missing parameter: {where}")
        elif request.user is None:
            where = "identifier.user" if request.identifier_type else "identifier"
            raise MatrixError(Codes.MISSING_PARAM, f"Missing parameter: {where}")
        if request.password is None:
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: password")
        self._check_device(request.device_id, request.initial_device_display_name)
        if third_party:
            assert request.medium is not None and request.address is not None
            # spec: a 3PID bound to no account is a 403, like a wrong password.
            user_id = await self._email_identity.owner_of(request.medium, request.address)
        else:
            assert request.user is not None
            user_id = parse_user_identifier(request.user, self._server_name)
        if user_id is None:
            raise MatrixError(Codes.FORBIDDEN, "Invalid username or password")
        await self._ratelimiter.check(Action.LOGIN, f"user:{user_id.lower()}")
        user = await self._store.get_user_case_insensitive(user_id)
        if user is not None and user.deactivated:
            # Its password is wiped on deactivation, so say why rather than "wrong password".
            raise MatrixError(Codes.USER_DEACTIVATED, "This account has been deactivated")
        if user is None or not await self._auth.check_password(
            user.password_hash, request.password
        ):
            raise MatrixError(Codes.FORBIDDEN, "Invalid username or password")
        if await self._store.is_locked(user.user_id):
            # spec, "Soft logout": a locked account gets no new token until it is unlocked.
            raise MatrixError(Codes.USER_LOCKED, "This account has been locked", soft_logout=True)
        session = await self._start_session(
            user.user_id,
            request.device_id,
            request.initial_device_display_name,
            refreshable=request.refresh_token,
            client_ip=request.client_ip,
        )
        logger.info(
            "user logged in", extra={"user_id": user.user_id, "device_id": session.device_id}
        )
        return session

    # --- sessions for the OAuth 2.0 API (homeserver/oauth) ---------------------------------

    async def check_password_sign_in(
        self, username: str, password: str, client_ip: str | None
    ) -> UserID:
        """The account a sign-in page's username and password name; the same limits and
        answers as m.login.password."""
        if client_ip is not None:
            await self._ratelimiter.check(Action.LOGIN, f"ip:{client_ip}")
        if not self._password_login:
            raise MatrixError(Codes.FORBIDDEN, "Password sign-in is turned off")
        user_id = parse_user_identifier(username, self._server_name)
        if user_id is None:
            raise MatrixError(Codes.FORBIDDEN, "Invalid username or password")
        await self._ratelimiter.check(Action.LOGIN, f"user:{user_id.lower()}")
        user = await self._store.get_user_case_insensitive(user_id)
        if user is not None and user.deactivated:
            raise MatrixError(Codes.USER_DEACTIVATED, "This account has been deactivated")
        if user is None or not await self._auth.check_password(user.password_hash, password):
            raise MatrixError(Codes.FORBIDDEN, "Invalid username or password")
        return user.user_id

    def open_registration(self) -> bool:
        """Whether anyone may register without a token (the OAuth page's prompt=create)."""
        return self._registration.enabled and not self._registration.require_token

    async def register_on_page(self, username: str, password: str, client_ip: str | None) -> UserID:
        """An account created on the OAuth 2.0 API's registration page."""
        if not self.open_registration():
            raise MatrixError(Codes.FORBIDDEN, "Registration is not open")
        if client_ip is not None:
            await self._ratelimiter.check(Action.REGISTRATION, f"ip:{client_ip}")
        user_id = self._new_user_id(username)
        self.check_password_strength(password)
        if await self._store.user_exists_ignoring_case(user_id) or not await self._create_user(
            user_id, await self._auth.hash_password(password), is_admin=False
        ):
            raise MatrixError(Codes.USER_IN_USE, "User ID already taken")
        logger.info("user registered on the sign-in page", extra={"user_id": user_id})
        return user_id

    async def start_refreshable_session(
        self, user_id: UserID, device_id: str, client_ip: str | None, oauth_client_id: str
    ) -> Session:
        """A session of an OAuth grant: the device is created, or reused (its old tokens go);
        its refresh token is for ``oauth_client_id`` alone."""
        self._check_device(device_id, None)
        return await self._start_session(
            user_id,
            device_id,
            None,
            refreshable=True,
            client_ip=client_ip,
            oauth_client_id=oauth_client_id,
        )

    async def end_all_sessions(self, user_id: UserID) -> int:
        """Every device of the account goes (single sign-on's back-channel logout)."""
        device_ids, hashes = await self._store.delete_devices_except(user_id, None)
        await self._devices_deleted(user_id, device_ids, hashes)
        return len(device_ids)

    async def end_session(self, user_id: UserID, device_id: str) -> None:
        """An OAuth session revoked: its device goes with its tokens (as /logout)."""
        await self._delete_devices(user_id, [device_id])

    async def _login_with_token(self, request: LoginRequest) -> Session:
        """m.login.token: a token minted by POST /login/get_token or single sign-on, used
        once."""
        assert self._login_tokens is not None
        self._check_device(request.device_id, request.initial_device_display_name)
        user_id = await self._login_tokens.spend(request.token)
        user = await self._store.get_user(user_id)
        if user is None or user.deactivated:
            raise MatrixError(Codes.USER_DEACTIVATED, "This account has been deactivated")
        return await self._start_session(
            user_id,
            request.device_id,
            request.initial_device_display_name,
            refreshable=request.refresh_token,
            client_ip=request.client_ip,
        )

    async def create_sso_user(self, username: str, displayname: str | None) -> UserID:
        """An account chosen on the first single sign-on (no password)."""
        user_id = self._new_user_id(username)
        if await self._store.user_exists_ignoring_case(user_id) or not await self._create_user(
            user_id, None, is_admin=False, displayname=(displayname or "")[:256] or None
        ):
            raise MatrixError(Codes.USER_IN_USE, "User ID already taken")
        logger.info("user registered by single sign-on", extra={"user_id": user_id})
        return user_id

    async def _login_jwt(self, jwt_login: JwtLogin, request: LoginRequest) -> Session:
        """org.matrix.login.jwt: the token's subject claim is the localpart."""
        if request.token is None:
            raise MatrixError(Codes.FORBIDDEN, "JWT validation failed: no token given")
        self._check_device(request.device_id, request.initial_device_display_name)
        subject = jwt_login.subject_of(request.token)
        localpart = subject.lower() if subject.isascii() else subject
        if not is_valid_new_localpart(localpart):
            raise MatrixError(Codes.FORBIDDEN, "JWT validation failed: subject is not a localpart")
        user_id = UserID.of(localpart, self._server_name)
        if len(user_id.encode()) > MAX_ID_BYTES:
            raise MatrixError(Codes.FORBIDDEN, "JWT validation failed: subject is too long")
        user = await self._store.get_user(user_id)
        if user is None:
            if not jwt_login.create_accounts:
                raise MatrixError(Codes.FORBIDDEN, "No account for this token's subject")
            # A lost race with another first login of the same subject still finds it below.
            if await self._create_user(user_id, None, is_admin=False):
                logger.info("account created by JWT login", extra={"user_id": user_id})
            user = await self._store.get_user(user_id)
            if user is None:
                raise MatrixError(Codes.UNKNOWN, "Could not create the account")
        if user.deactivated:
            raise MatrixError(Codes.USER_DEACTIVATED, "This account has been deactivated")
        session = await self._start_session(
            user.user_id,
            request.device_id,
            request.initial_device_display_name,
            refreshable=request.refresh_token,
            client_ip=request.client_ip,
        )
        logger.info(
            "user logged in with a JWT",
            extra={"user_id": user.user_id, "device_id": session.device_id},
        )
        return session

    async def _login_app_service_user(self, request: LoginRequest) -> Session:
        """spec: m.login.application_service logs in a user of the service's namespaces."""
        service = self._app_service_of(request.as_token)
        if request.identifier_type not in (None, "m.id.user"):
            raise MatrixError(
                Codes.UNKNOWN, f"Unknown identifier type {request.identifier_type}", status=400
            )
        if request.user is None:
            raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: identifier.user")
        self._check_device(request.device_id, request.initial_device_display_name)
        user_id = parse_user_identifier(request.user, self._server_name)
        if user_id is None or not service.is_user_in_namespace(user_id):
            raise MatrixError(
                Codes.FORBIDDEN, "This user is not in the application service's namespaces"
            )
        user = await self._store.get_user(user_id)
        if user is None:
            raise MatrixError(Codes.FORBIDDEN, "Unknown user")
        if user.deactivated:
            raise MatrixError(Codes.USER_DEACTIVATED, "This account has been deactivated")
        return await self._start_session(
            user.user_id,
            request.device_id,
            request.initial_device_display_name,
            refreshable=request.refresh_token,
            client_ip=request.client_ip,
        )

    async def refresh(self, refresh_token: str, oauth_client_id: str | None = None) -> Session:
        return await self._auth.refresh(refresh_token, oauth_client_id)

    async def logout(self, requester: Requester) -> None:
        """Revoke the token and delete its device (spec: /logout deletes the device)."""
        if requester.app_service_id is not None and not requester.device_id:
            return  # an as_token without a device: nothing to log out
        await self._delete_devices(requester.user_id, [requester.device_id])

    async def logout_all(self, requester: Requester) -> None:
        device_ids, hashes = await self._store.delete_devices_except(requester.user_id, None)
        await self._devices_deleted(requester.user_id, device_ids, hashes)

    def whoami(self, requester: Requester) -> JsonDict:
        out: JsonDict = {"user_id": requester.user_id, "is_guest": requester.is_guest}
        if requester.device_id:  # an application service acting without a device has none
            out["device_id"] = requester.device_id
        return out

    async def _start_session(
        self,
        user_id: UserID,
        device_id: str | None,
        display_name: str | None,
        *,
        refreshable: bool,
        client_ip: str | None,
        oauth_client_id: str | None = None,
    ) -> Session:
        if device_id is None:
            device_id = new_device_id()
        elif await self._store.get_device(user_id, device_id) is not None:
            # spec: a client that names its device gets it back, but the device's previous
            # access and refresh tokens stop working; its display name is kept.
            await self._auth.forget_cached(
                await self._store.delete_device_tokens(user_id, device_id)
            )
            display_name = None
        await self._store.upsert_device(
            user_id, device_id, display_name, self._clock.now_ms(), client_ip
        )
        return await self._auth.create_session(
            user_id, device_id, refreshable=refreshable, oauth_client_id=oauth_client_id
        )

    def _check_device(self, device_id: str | None, display_name: str | None) -> None:
        if device_id is not None and not is_valid_device_id(device_id):
            raise MatrixError(
                Codes.INVALID_PARAM,
                f"device_id must be 1 to {MAX_DEVICE_ID_BYTES} printable ASCII characters",
            )
        if display_name is not None:
            self._check_display_name(display_name)

    def _check_display_name(self, display_name: str) -> None:
        if len(display_name) > MAX_DEVICE_DISPLAY_NAME_CHARS:
            raise MatrixError(
                Codes.INVALID_PARAM,
                f"Device display name is longer than {MAX_DEVICE_DISPLAY_NAME_CHARS} characters",
            )

    # --- password and deactivation ---------------------------------------------------------

    async def change_password(
        self,
        requester: Requester | None,
        new_password: str,
        logout_devices: bool,
        auth: JsonDict | None,
        fingerprint: str,
    ) -> AuthChallenge | None:
        """spec: /account/password; without an access token the password stage (or the
        validated e-mail address of ``m.login.email.identity``) says who."""
        self.check_password_strength(new_password)
        flows = PASSWORD_FLOWS
        if self._email_identity.enabled:
            flows = [*PASSWORD_FLOWS, [LOGIN_EMAIL_IDENTITY]]  # password reset by mail
        result = await self._uia.authenticate(
            auth, flows, fingerprint, requester=requester.user_id if requester is not None else None
        )
        if isinstance(result, AuthChallenge):
            return result
        user_id = requester.user_id if requester is not None else result.user_id
        assert user_id is not None  # the password stage names the user
        await self._store.set_password_hash(user_id, await self._auth.hash_password(new_password))
        await self._uia.finish(result)
        if logout_devices:
            # spec: the other devices go, with their tokens; the requesting one stays.
            keep = requester.device_id if requester is not None else None
            device_ids, hashes = await self._store.delete_devices_except(user_id, keep)
            await self._devices_deleted(user_id, device_ids, hashes)
        logger.info("password changed", extra={"user_id": user_id})
        return None

    async def deactivate(
        self, requester: Requester | None, auth: JsonDict | None, fingerprint: str
    ) -> AuthChallenge | None:
        result = await self._uia.authenticate(
            auth,
            PASSWORD_FLOWS,
            fingerprint,
            requester=requester.user_id if requester is not None else None,
        )
        if isinstance(result, AuthChallenge):
            return result
        user_id = requester.user_id if requester is not None else result.user_id
        assert user_id is not None
        # The flag stops every token at once (token lookups check it); then they go for good.
        await self._store.set_deactivated(user_id)
        await self._auth.forget_user(user_id)
        await self._uia.finish(result)
        device_ids, hashes = await self._store.delete_devices_except(user_id, None)
        await self._devices_deleted(user_id, device_ids, hashes)
        for data in self._user_data:
            await data.deactivate_user(user_id)
        logger.info("user deactivated", extra={"user_id": user_id})
        return None

    # --- for the server's administrators (the admin API) -----------------------------------

    async def create_user_as_admin(
        self, user_id: UserID, password: str | None, *, admin: bool, displayname: str | None
    ) -> bool:
        """Create a local account of this exact ID; False if it (or another case of it) is
        taken. Without a password nobody can log in to it until one is set."""
        if user_id.server_name != self._server_name or not is_valid_new_localpart(
            user_id.localpart
        ):
            raise MatrixError(Codes.INVALID_USERNAME, "Not a valid user ID for this server")
        password_hash = None
        if password is not None:
            self.check_password_strength(password)
            password_hash = await self._auth.hash_password(password)
        if await self._store.user_exists_ignoring_case(user_id):
            return False
        created = await self._store.create_user(
            user_id,
            password_hash,
            is_admin=admin,
            created_ts=self._clock.now_ms(),
            displayname=displayname if displayname is not None else user_id.localpart,
        )
        if created:
            logger.info("user registered by an administrator", extra={"user_id": user_id})
        return created

    async def open_session(self, user_id: UserID, client_ip: str | None) -> Session:
        """A new device and access token for the user (the admin API's registration)."""
        return await self._start_session(
            user_id, None, None, refreshable=False, client_ip=client_ip
        )

    async def user_exists(self, user_id: UserID) -> bool:
        return await self._store.get_user(user_id) is not None

    async def set_password_as_admin(
        self, user_id: UserID, new_password: str, *, logout_devices: bool
    ) -> None:
        self.check_password_strength(new_password)
        await self._store.set_password_hash(user_id, await self._auth.hash_password(new_password))
        if logout_devices:
            device_ids, hashes = await self._store.delete_devices_except(user_id, None)
            await self._devices_deleted(user_id, device_ids, hashes)
        logger.info("password reset by an administrator", extra={"user_id": user_id})

    async def deactivate_as_admin(self, user_id: UserID) -> None:
        """What /account/deactivate does once authenticated: the tokens stop, the devices
        go, the user leaves every room and lets go of every e-mail address."""
        await self._store.set_deactivated(user_id)
        device_ids, hashes = await self._store.delete_devices_except(user_id, None)
        await self._devices_deleted(user_id, device_ids, hashes)
        for data in self._user_data:
            await data.deactivate_user(user_id)
        logger.info("user deactivated by an administrator", extra={"user_id": user_id})

    async def delete_devices_as_admin(self, user_id: UserID, device_ids: Sequence[str]) -> None:
        await self._delete_devices(user_id, list(dict.fromkeys(device_ids)))

    async def create_device_as_admin(self, user_id: UserID, device_id: str) -> None:
        """Create the device if it does not exist (an existing one is left as it is)."""
        self._check_device(device_id, None)
        if await self._store.get_device(user_id, device_id) is None:
            await self._store.upsert_device(user_id, device_id, None, self._clock.now_ms())

    async def update_device_as_admin(
        self, user_id: UserID, device_id: str, display_name: str | None
    ) -> None:
        requester = Requester(user_id, device_id, 0)
        await self.update_device(requester, device_id, display_name)

    # --- devices ---------------------------------------------------------------------------

    async def get_devices(self, requester: Requester) -> list[Device]:
        return await self._store.get_devices(requester.user_id)

    async def get_device(self, requester: Requester, device_id: str) -> Device:
        device = await self._store.get_device(requester.user_id, device_id)
        if device is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown device")
        return device

    async def update_device(
        self, requester: Requester, device_id: str, display_name: str | None
    ) -> bool:
        """spec: only application services may create devices here (v1.17, for their users'
        encryption); others update theirs. True when the device was created."""
        if (
            requester.app_service_id is not None
            and await self._store.get_device(requester.user_id, device_id) is None
        ):
            self._check_device(device_id, display_name)
            await self._store.upsert_device(
                requester.user_id, device_id, display_name, self._clock.now_ms()
            )
            return True
        if display_name is None:
            await self.get_device(requester, device_id)
            return False
        self._check_display_name(display_name)
        if not await self._store.set_device_display_name(
            requester.user_id, device_id, display_name
        ):
            raise MatrixError(Codes.NOT_FOUND, "Unknown device")
        return False

    async def delete_devices(
        self,
        requester: Requester,
        device_ids: Sequence[str],
        auth: JsonDict | None,
        fingerprint: str,
    ) -> AuthChallenge | None:
        if requester.app_service_id is None:
            # spec v1.17: application services delete their users' devices without UIA.
            result = await self._uia.authenticate(
                auth, PASSWORD_FLOWS, fingerprint, requester=requester.user_id
            )
            if isinstance(result, AuthChallenge):
                return result
            await self._uia.finish(result)
        # spec: devices already gone count as deleted.
        await self._delete_devices(requester.user_id, list(dict.fromkeys(device_ids)))
        return None

    async def _delete_devices(self, user_id: UserID, device_ids: list[str]) -> None:
        if not device_ids:
            return
        hashes = await self._store.delete_devices(user_id, device_ids)
        await self._devices_deleted(user_id, device_ids, hashes)

    async def _devices_deleted(
        self, user_id: UserID, device_ids: list[str], token_hashes: list[bytes]
    ) -> None:
        await self._auth.forget_cached([bytes(h) for h in token_hashes])
        if device_ids:
            for data in self._device_data:
                await data.delete_for_devices(user_id, device_ids)


def _first_str(given: str | None, remembered: object) -> str | None:
    """The request's value, else the one its session remembered (if it is a string)."""
    if given is not None:
        return given
    return remembered if isinstance(remembered, str) else None
