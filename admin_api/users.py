"""The admin API on accounts: Synapse's ``/_synapse/admin/{v1,v2}/users...`` paths and shapes,
and the spec's own (v1.18) ``/_matrix/client/v1/admin/{lock,suspend}`` and
``/admin/whois``."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.admin.shared_secret import SharedSecretRegistration
from homeserver.admin.users import AdminUsers, UserChanges
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.storage.admin import USER_ORDERS, UserQuery
from homeserver.web.edge import (
    RequestBody,
    json_response,
    parse_body,
    query_bool,
    query_int,
    require_user,
    services_of,
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TEXT_CHARS = 1000  # display names, addresses, passwords have their own, tighter limits


@dataclass(frozen=True, slots=True)
class AdminUserServices:
    users: AdminUsers
    shared_secret: SharedSecretRegistration


def _users(request: Request) -> AdminUsers:
    return services_of(request, AdminUserServices).users


def _user_id(request: Request) -> UserID:
    return _users(request).local_user(request.path_params["user_id"])


def _optional_bool(request: Request, name: str) -> bool | None:
    if name not in request.query_params:
        return None
    return query_bool(request, name)


def _direction(request: Request) -> bool:
    """True for ``dir=b``."""
    raw = request.query_params.get("dir", "f")
    if raw not in ("f", "b"):
        raise MatrixError(Codes.INVALID_PARAM, "Query parameter dir must be f or b")
    return raw == "b"


def _text(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and len(raw) > MAX_TEXT_CHARS:
        raise MatrixError(Codes.INVALID_PARAM, f"Query parameter {name} is too long")
    return raw or None


async def list_users(request: Request) -> Response:
    """GET /_synapse/admin/v2/users and /v3/users (``deactivated`` a filter both ways)"""
    requester = await require_user(request)
    v2 = request.url.path.endswith("/v2/users")
    order_by = request.query_params.get("order_by", "name")
    if order_by not in USER_ORDERS:
        raise MatrixError(
            Codes.INVALID_PARAM, f"order_by must be one of {', '.join(sorted(USER_ORDERS))}"
        )
    offset = query_int(request, "from", 0, minimum=0)
    limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT)
    assert offset is not None and limit is not None
    query = UserQuery(
        offset=offset,
        limit=limit,
        name=_text(request, "name"),
        user_id=_text(request, "user_id"),
        guests=query_bool(request, "guests", True),
        deactivated=query_bool(request, "deactivated", False) if v2 else True,
        only_deactivated=None if v2 else _optional_bool(request, "deactivated"),
        admins=_optional_bool(request, "admins"),
        locked=query_bool(request, "locked", False),
        order_by=order_by,
        backwards=_direction(request),
    )
    users, total, next_offset = await _users(request).list_users(requester, query)
    out: dict[str, object] = {"users": users, "total": total}
    if next_offset is not None:
        out["next_token"] = str(next_offset)
    return json_response(out)


async def get_user(request: Request) -> Response:
    """GET /_synapse/admin/v2/users/{userId}"""
    requester = await require_user(request)
    return json_response(await _users(request).get_user(requester, _user_id(request)))


class ThreepidBody(RequestBody):
    medium: str = Field(max_length=16)
    address: str = Field(min_length=1, max_length=320)


class PutUserBody(RequestBody):
    password: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    logout_devices: bool = True
    displayname: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    avatar_url: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    threepids: list[ThreepidBody] | None = Field(default=None, max_length=100)
    admin: bool | None = None
    deactivated: bool | None = None
    locked: bool | None = None
    user_type: str | None = Field(default=None, max_length=64)


async def put_user(request: Request) -> Response:
    """PUT /_synapse/admin/v2/users/{userId}"""
    requester = await require_user(request)
    user_id = _user_id(request)
    body = await parse_body(request, PutUserBody)
    changes = UserChanges(
        password=body.password,
        logout_devices=body.logout_devices,
        displayname=body.displayname,
        avatar_url=body.avatar_url,
        threepids=None
        if body.threepids is None
        else tuple((t.medium, t.address.lower()) for t in body.threepids),
        admin=body.admin,
        deactivated=body.deactivated,
        locked=body.locked,
        user_type=body.user_type,
        clear_user_type="user_type" in body.model_fields_set and body.user_type is None,
    )
    created, user = await _users(request).put_user(requester, user_id, changes)
    return json_response(user, status_code=201 if created else 200)


class DeactivateBody(RequestBody):
    erase: bool = False


async def deactivate(request: Request) -> Response:
    """POST /_synapse/admin/v1/deactivate/{userId}"""
    requester = await require_user(request)
    user_id = _user_id(request)
    body = await parse_body(request, DeactivateBody, empty_ok=True)
    await _users(request).deactivate(requester, user_id, erase=body.erase)
    return json_response({"id_server_unbind_result": "success"})


class ResetPasswordBody(RequestBody):
    new_password: str = Field(max_length=MAX_TEXT_CHARS)
    logout_devices: bool = True


async def reset_password(request: Request) -> Response:
    """POST /_synapse/admin/v1/reset_password/{userId}"""
    requester = await require_user(request)
    user_id = _user_id(request)
    body = await parse_body(request, ResetPasswordBody)
    await _users(request).reset_password(
        requester, user_id, body.new_password, logout_devices=body.logout_devices
    )
    return json_response({})


async def whois(request: Request) -> Response:
    """GET /_synapse/admin/v1/whois/{userId}"""
    requester = await require_user(request)
    return json_response(await _users(request).whois(requester, _user_id(request)))


# --- devices --------------------------------------------------------------------------------


async def list_devices(request: Request) -> Response:
    """GET /_synapse/admin/v2/users/{userId}/devices"""
    requester = await require_user(request)
    devices = await _users(request).devices(requester, _user_id(request))
    return json_response({"devices": devices, "total": len(devices)})


class CreateDeviceBody(RequestBody):
    device_id: str = Field(max_length=MAX_TEXT_CHARS)


async def create_device(request: Request) -> Response:
    """POST /_synapse/admin/v2/users/{userId}/devices"""
    requester = await require_user(request)
    user_id = _user_id(request)
    body = await parse_body(request, CreateDeviceBody)
    await _users(request).create_device(requester, user_id, body.device_id)
    return json_response({})


async def get_device(request: Request) -> Response:
    """GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}"""
    requester = await require_user(request)
    device = await _users(request).device(
        requester, _user_id(request), request.path_params["device_id"]
    )
    return json_response(device)


class UpdateDeviceBody(RequestBody):
    display_name: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)


async def put_device(request: Request) -> Response:
    """PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}"""
    requester = await require_user(request)
    user_id = _user_id(request)
    body = await parse_body(request, UpdateDeviceBody, empty_ok=True)
    await _users(request).update_device(
        requester, user_id, request.path_params["device_id"], body.display_name
    )
    return json_response({})


async def delete_device(request: Request) -> Response:
    """DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}"""
    requester = await require_user(request)
    await _users(request).delete_devices(
        requester, _user_id(request), [request.path_params["device_id"]]
    )
    return json_response({})


class DeleteDevicesBody(RequestBody):
    devices: list[str] = Field(max_length=1000)


async def delete_devices(request: Request) -> Response:
    """POST /_synapse/admin/v2/users/{userId}/delete_devices"""
    requester = await require_user(request)
    user_id = _user_id(request)
    body = await parse_body(request, DeleteDevicesBody)
    await _users(request).delete_devices(requester, user_id, body.devices)
    return json_response({})


# --- flags ----------------------------------------------------------------------------------


async def shadow_ban(request: Request) -> Response:
    """POST and DELETE /_synapse/admin/v1/users/{userId}/shadow_ban"""
    requester = await require_user(request)
    on = request.method == "POST"
    await _users(request).set_flag(requester, _user_id(request), "shadow_banned", on)
    return json_response({})


class SuspendBody(RequestBody):
    suspend: bool


async def put_suspend(request: Request) -> Response:
    """PUT /_synapse/admin/v1/suspend/{userId}"""
    requester = await require_user(request)
    user_id = _user_id(request)
    body = await parse_body(request, SuspendBody)
    await _users(request).set_flag(requester, user_id, "suspended", body.suspend)
    return json_response({f"user_{user_id}_suspended": body.suspend})


class SpecLockBody(RequestBody):
    locked: bool


class SpecSuspendBody(RequestBody):
    suspended: bool


async def spec_lock(request: Request) -> Response:
    """GET and PUT /_matrix/client/v1/admin/lock/{userId}"""
    requester = await require_user(request)
    user_id = _user_id(request)
    users = _users(request)
    if request.method == "PUT":
        body = await parse_body(request, SpecLockBody)
        await users.set_flag(requester, user_id, "locked", body.locked)
        return json_response({"locked": body.locked})
    return json_response({"locked": await users.get_flag(requester, user_id, "locked")})


async def spec_suspend(request: Request) -> Response:
    """GET and PUT /_matrix/client/v1/admin/suspend/{userId}"""
    requester = await require_user(request)
    user_id = _user_id(request)
    users = _users(request)
    if request.method == "PUT":
        body = await parse_body(request, SpecSuspendBody)
        await users.set_flag(requester, user_id, "suspended", body.suspended)
        return json_response({"suspended": body.suspended})
    return json_response({"suspended": await users.get_flag(requester, user_id, "suspended")})


class RatelimitBody(RequestBody):
    messages_per_second: int = Field(default=0, ge=0, le=1_000_000)
    burst_count: int = Field(default=0, ge=0, le=1_000_000)


async def override_ratelimit(request: Request) -> Response:
    """GET, POST and DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit"""
    requester = await require_user(request)
    user_id = _user_id(request)
    users = _users(request)
    if request.method == "GET":
        return json_response(await users.get_ratelimit(requester, user_id))
    if request.method == "DELETE":
        await users.delete_ratelimit(requester, user_id)
        return json_response({})
    body = await parse_body(request, RatelimitBody, empty_ok=True)
    return json_response(
        await users.set_ratelimit(requester, user_id, body.messages_per_second, body.burst_count)
    )


# --- acting as, reading --------------------------------------------------------------------


class LoginAsBody(RequestBody):
    valid_until_ms: int | None = Field(default=None, ge=0, le=2**53)


async def login_as(request: Request) -> Response:
    """POST /_synapse/admin/v1/users/{userId}/login"""
    requester = await require_user(request)
    user_id = _user_id(request)
    body = await parse_body(request, LoginAsBody, empty_ok=True)
    token = await _users(request).login_as(requester, user_id, body.valid_until_ms)
    return json_response({"access_token": token})


async def joined_rooms(request: Request) -> Response:
    """GET /_synapse/admin/v1/users/{userId}/joined_rooms"""
    requester = await require_user(request)
    rooms = await _users(request).joined_rooms(requester, _user_id(request))
    return json_response({"joined_rooms": rooms, "total": len(rooms)})


async def account_data(request: Request) -> Response:
    """GET /_synapse/admin/v1/users/{userId}/accountdata"""
    requester = await require_user(request)
    return json_response(await _users(request).account_data(requester, _user_id(request)))


class SharedSecretBody(RequestBody):
    nonce: str = Field(max_length=MAX_TEXT_CHARS)
    username: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    password: str = Field(max_length=MAX_TEXT_CHARS)
    admin: bool = False
    user_type: str | None = Field(default=None, max_length=64)
    displayname: str | None = Field(default=None, max_length=256)
    mac: str = Field(max_length=128)


async def shared_secret_register(request: Request) -> Response:
    """GET and POST /_synapse/admin/v1/register (no access token: the shared secret)"""
    registration = services_of(request, AdminUserServices).shared_secret
    if request.method == "GET":
        return json_response({"nonce": registration.new_nonce()})
    body = await parse_body(request, SharedSecretBody)
    client = request.client
    session = await registration.register(
        body.nonce,
        body.username,
        body.password,
        body.admin,
        body.user_type,
        body.displayname,
        body.mac,
        client.host if client is not None else None,
    )
    return json_response(
        {
            "user_id": session.user_id,
            "access_token": session.access_token,
            "device_id": session.device_id,
            "home_server": session.user_id.server_name,
        }
    )


async def memberships(request: Request) -> Response:
    """GET /_synapse/admin/v1/users/{userId}/memberships"""
    requester = await require_user(request)
    found = await _users(request).memberships(requester, _user_id(request))
    return json_response({"memberships": found})


async def pushers(request: Request) -> Response:
    """GET /_synapse/admin/v1/users/{userId}/pushers"""
    requester = await require_user(request)
    found = await _users(request).pushers(requester, _user_id(request))
    return json_response({"pushers": found, "total": len(found)})


class AdminBody(RequestBody):
    admin: bool


async def user_admin(request: Request) -> Response:
    """GET and PUT /_synapse/admin/v1/users/{userId}/admin"""
    requester = await require_user(request)
    user_id = _user_id(request)
    users = _users(request)
    if request.method == "PUT":
        body = await parse_body(request, AdminBody)
        await users.set_admin(requester, user_id, body.admin)
        return json_response({})
    return json_response({"admin": await users.is_admin(requester, user_id)})


async def threepid_user(request: Request) -> Response:
    """GET /_synapse/admin/v1/threepid/{medium}/users/{address}"""
    requester = await require_user(request)
    owner = await _users(request).user_of_threepid(
        requester, request.path_params["medium"], request.path_params["address"]
    )
    return json_response({"user_id": owner})


async def username_available(request: Request) -> Response:
    """GET /_synapse/admin/v1/username_available"""
    requester = await require_user(request)
    username = request.query_params.get("username")
    if username is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: username")
    await _users(request).username_available(requester, username)
    return json_response({"available": True})


routes = [
    Route("/v2/users", list_users, methods=["GET"]),
    Route("/v3/users", list_users, methods=["GET"]),
    Route("/v2/users/{user_id}", get_user, methods=["GET"]),
    Route("/v2/users/{user_id}", put_user, methods=["PUT"]),
    Route("/v2/users/{user_id}/devices", list_devices, methods=["GET"]),
    Route("/v2/users/{user_id}/devices", create_device, methods=["POST"]),
    Route("/v2/users/{user_id}/devices/{device_id}", get_device, methods=["GET"]),
    Route("/v2/users/{user_id}/devices/{device_id}", put_device, methods=["PUT"]),
    Route("/v2/users/{user_id}/devices/{device_id}", delete_device, methods=["DELETE"]),
    Route("/v2/users/{user_id}/delete_devices", delete_devices, methods=["POST"]),
    Route("/v1/deactivate/{user_id}", deactivate, methods=["POST"]),
    Route("/v1/reset_password/{user_id}", reset_password, methods=["POST"]),
    Route("/v1/whois/{user_id}", whois, methods=["GET"]),
    Route("/v1/suspend/{user_id}", put_suspend, methods=["PUT"]),
    Route("/v1/users/{user_id}/shadow_ban", shadow_ban, methods=["POST", "DELETE"]),
    Route(
        "/v1/users/{user_id}/override_ratelimit",
        override_ratelimit,
        methods=["GET", "POST", "DELETE"],
    ),
    Route("/v1/users/{user_id}/login", login_as, methods=["POST"]),
    Route("/v1/users/{user_id}/joined_rooms", joined_rooms, methods=["GET"]),
    Route("/v1/users/{user_id}/accountdata", account_data, methods=["GET"]),
    Route("/v1/username_available", username_available, methods=["GET"]),
    Route("/v1/users/{user_id}/memberships", memberships, methods=["GET"]),
    Route("/v1/register", shared_secret_register, methods=["GET", "POST"]),
    Route("/v1/users/{user_id}/pushers", pushers, methods=["GET"]),
    Route("/v1/users/{user_id}/admin", user_admin, methods=["GET", "PUT"]),
    Route("/v1/threepid/{medium}/users/{address}", threepid_user, methods=["GET"]),
]

# Mounted under /_matrix/client (spec v1.18, "Account moderation"; whois since r0).
client_routes = [
    Route("/v1/admin/lock/{user_id}", spec_lock, methods=["GET", "PUT"]),
    Route("/v1/admin/suspend/{user_id}", spec_suspend, methods=["GET", "PUT"]),
    Route("/v3/admin/whois/{user_id}", whois, methods=["GET"]),
]
