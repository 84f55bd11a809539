"""Registration, login, logout, token refresh and account management (legacy auth API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.accounts.service import (
    LOGIN_APPLICATION_SERVICE,
    AccountService,
    LoginRequest,
    RegistrationRequest,
)
from homeserver.accounts.tokens import Session
from homeserver.accounts.uia import AuthChallenge
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict, Requester
from homeserver.web.edge import (
    EdgeServices,
    RequestBody,
    access_token_of,
    json_response,
    parse_body,
    require_user,
    services_of,
)


@dataclass(frozen=True, slots=True)
class AccountServices:
    """What the account routes call: registration, login, logout, passwords, deactivation."""

    accounts: AccountService
    server_name: str
    base_url: str


# --- helpers shared with the other UIA-protected routes (devices) ---------------------------


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def uia_fingerprint(request: Request) -> str:
    """What a UIA session is bound to: this method and path."""
    return f"{request.method} {request.url.path}"


def challenge_response(challenge: AuthChallenge) -> Response:
    return json_response(challenge.body, status_code=401)


async def optional_user(request: Request) -> Requester | None:
    """The requester if an access token is given (endpoints where the spec makes it optional)."""
    if access_token_of(request) is None:
        return None
    return await require_user(request)


def session_json(session: Session) -> JsonDict:
    out: JsonDict = {
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
    }
    if session.refresh_token is not None:
        out["refresh_token"] = session.refresh_token
    if session.expires_in_ms is not None:
        out["expires_in_ms"] = session.expires_in_ms
    return out


# --- registration ---------------------------------------------------------------------------


class RegisterBody(RequestBody):
    type: str | None = None  # m.login.application_service
    auth: dict[str, Any] | None = None
    username: str | None = None
    password: str | None = None
    device_id: str | None = None
    initial_device_display_name: str | None = None
    inhibit_login: bool = False
    refresh_token: bool = False
    guest_access_token: str | None = None  # upgrades that guest's account


class GuestRegisterBody(RequestBody):
    initial_device_display_name: str | None = None


async def post_register(request: Request) -> Response:
    """POST /_matrix/client/v3/register"""
    hs = services_of(request, AccountServices)
    kind = request.query_params.get("kind", "user")
    if kind not in ("user", "guest"):
        raise MatrixError(Codes.INVALID_PARAM, "kind must be 'user' or 'guest'")
    if kind == "guest":
        guest_body = await parse_body(request, GuestRegisterBody, empty_ok=True)
        registered = await hs.accounts.register_guest(
            guest_body.initial_device_display_name, client_ip(request)
        )
        assert registered.session is not None
        return json_response({**session_json(registered.session), "home_server": hs.server_name})
    body = await parse_body(request, RegisterBody)
    guest = None
    if body.guest_access_token is not None:
        tokens = services_of(request, EdgeServices).tokens
        guest = await tokens.get_requester(body.guest_access_token)
    result = await hs.accounts.register(
        RegistrationRequest(
            username=body.username,
            password=body.password,
            device_id=body.device_id,
            initial_device_display_name=body.initial_device_display_name,
            inhibit_login=body.inhibit_login,
            refresh_token=body.refresh_token,
            auth=body.auth,
            client_ip=client_ip(request),
            login_type=body.type,
            as_token=access_token_of(request) if body.type == LOGIN_APPLICATION_SERVICE else None,
            guest=guest,
        ),
        uia_fingerprint(request),
    )
    if isinstance(result, AuthChallenge):
        return challenge_response(result)
    if result.session is None:
        return json_response({"user_id": result.user_id, "home_server": hs.server_name})
    return json_response({**session_json(result.session), "home_server": hs.server_name})


async def get_register_available(request: Request) -> Response:
    """GET /_matrix/client/v3/register/available"""
    hs = services_of(request, AccountServices)
    username = request.query_params.get("username")
    if username is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: username")
    await hs.accounts.check_username_available(username, client_ip(request))
    return json_response({"available": True})


async def get_registration_token_validity(request: Request) -> Response:
    """GET /_matrix/client/v1/register/m.login.registration_token/validity"""
    hs = services_of(request, AccountServices)
    token = request.query_params.get("token")
    if token is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: token")
    valid = await hs.accounts.registration_token_validity(token, client_ip(request))
    return json_response({"valid": valid})


# --- login, logout, refresh -----------------------------------------------------------------


class UserIdentifier(RequestBody):
    model_config = ConfigDict(extra="allow")  # third-party identifiers carry other keys
    type: str
    user: str | None = None
    medium: str | None = None  # m.id.thirdparty
    address: str | None = None


class LoginBody(RequestBody):
    type: str
    identifier: UserIdentifier | None = None
    user: str | None = None  # deprecated in favour of identifier
    medium: str | None = None  # deprecated
    address: str | None = None  # deprecated
    password: str | None = None
    token: str | None = None  # m.login.token, org.matrix.login.jwt
    device_id: str | None = None
    initial_device_display_name: str | None = None
    refresh_token: bool = False


async def get_login(request: Request) -> Response:
    """GET /_matrix/client/v3/login"""
    return json_response({"flows": services_of(request, AccountServices).accounts.login_flows()})


async def post_login(request: Request) -> Response:
    """POST /_matrix/client/v3/login"""
    hs = services_of(request, AccountServices)
    body = await parse_body(request, LoginBody)
    identifier = body.identifier
    session = await hs.accounts.login(
        LoginRequest(
            login_type=body.type,
            identifier_type=identifier.type if identifier is not None else None,
            user=identifier.user if identifier is not None else body.user,
            medium=identifier.medium if identifier is not None else body.medium,
            address=identifier.address if identifier is not None else body.address,
            password=body.password,
            device_id=body.device_id,
            initial_device_display_name=body.initial_device_display_name,
            refresh_token=body.refresh_token,
            client_ip=client_ip(request),
            as_token=access_token_of(request) if body.type == LOGIN_APPLICATION_SERVICE else None,
            token=body.token,
        )
    )
    return json_response(
        {
            **session_json(session),
            "home_server": hs.server_name,
            "well_known": {"m.homeserver": {"base_url": hs.base_url}},
        }
    )


class RefreshBody(RequestBody):
    refresh_token: str


async def post_refresh(request: Request) -> Response:
    """POST /_matrix/client/v3/refresh"""
    hs = services_of(request, AccountServices)
    body = await parse_body(request, RefreshBody)
    session = await hs.accounts.refresh(body.refresh_token)
    out: JsonDict = {"access_token": session.access_token}
    if session.refresh_token is not None:
        out["refresh_token"] = session.refresh_token
    if session.expires_in_ms is not None:
        out["expires_in_ms"] = session.expires_in_ms
    return json_response(out)


async def post_logout(request: Request) -> Response:
    """POST /_matrix/client/v3/logout"""
    hs = services_of(request, AccountServices)
    requester = await require_user(request, allow_locked=True)
    await hs.accounts.logout(requester)
    return json_response({})


async def post_logout_all(request: Request) -> Response:
    """POST /_matrix/client/v3/logout/all"""
    hs = services_of(request, AccountServices)
    requester = await require_user(request, allow_locked=True)
    await hs.accounts.logout_all(requester)
    return json_response({})


async def get_whoami(request: Request) -> Response:
    """GET /_matrix/client/v3/account/whoami"""
    hs = services_of(request, AccountServices)
    requester = await require_user(request)
    return json_response(hs.accounts.whoami(requester))


# --- password and deactivation --------------------------------------------------------------


class PasswordBody(RequestBody):
    new_password: str
    logout_devices: bool = True
    auth: dict[str, Any] | None = None


async def post_password(request: Request) -> Response:
    """POST /_matrix/client/v3/account/password"""
    hs = services_of(request, AccountServices)
    requester = await optional_user(request)
    body = await parse_body(request, PasswordBody)
    challenge = await hs.accounts.change_password(
        requester, body.new_password, body.logout_devices, body.auth, uia_fingerprint(request)
    )
    if challenge is not None:
        return challenge_response(challenge)
    return json_response({})


class DeactivateBody(RequestBody):
    auth: dict[str, Any] | None = None
    id_server: str | None = None
    erase: bool = False


async def post_deactivate(request: Request) -> Response:
    """POST /_matrix/client/v3/account/deactivate"""
    hs = services_of(request, AccountServices)
    requester = await optional_user(request)
    body = await parse_body(request, DeactivateBody)
    challenge = await hs.accounts.deactivate(requester, body.auth, uia_fingerprint(request))
    if challenge is not None:
        return challenge_response(challenge)
    # spec: "success" when there was nothing to unbind, which is always the case here (no
    # identity server is ever bound to; the account's own addresses go with it).
    return json_response({"id_server_unbind_result": "success"})


client_routes = [
    Route("/v3/register", post_register, methods=["POST"]),
    Route("/v3/register/available", get_register_available, methods=["GET"]),
    Route(
        "/v1/register/m.login.registration_token/validity",
        get_registration_token_validity,
        methods=["GET"],
    ),
    Route("/v3/login", get_login, methods=["GET"]),
    Route("/v3/login", post_login, methods=["POST"]),
    Route("/v3/refresh", post_refresh, methods=["POST"]),
    Route("/v3/logout", post_logout, methods=["POST"]),
    Route("/v3/logout/all", post_logout_all, methods=["POST"]),
    Route("/v3/account/whoami", get_whoami, methods=["GET"]),
    Route("/v3/account/password", post_password, methods=["POST"]),
    Route("/v3/account/deactivate", post_deactivate, methods=["POST"]),
]
