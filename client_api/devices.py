"""Device management: list, rename and delete the devices of one's account."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from client_api.account import challenge_response, uia_fingerprint
from homeserver.accounts.service import AccountService
from homeserver.core.types import JsonDict
from homeserver.storage.accounts import Device
from homeserver.web.edge import (
    BodyT,
    RequestBody,
    json_response,
    parse_body,
    require_user,
    services_of,
    validate_body,
)


@dataclass(frozen=True, slots=True)
class DeviceServices:
    """What the routes of devices call (built by the composition root)."""

    accounts: AccountService


def device_json(device: Device) -> JsonDict:
    # The spec would leave out what is unknown, but matrix-nio requires all four keys
    # (null allowed), as Synapse sends them: present, and null only when really unknown.
    return {
        "device_id": device.device_id,
        "display_name": device.display_name,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_ts": device.last_seen_ts,
    }


async def parse_body_or_empty(request: Request, model: type[BodyT]) -> BodyT:
    """A DELETE may come without a body (clients do, for the first UIA round): ``{}``."""
    if (
        request.headers.get("content-length", "0") == "0"
        and "transfer-encoding" not in request.headers
    ):
        return validate_body({}, model)
    return await parse_body(request, model)


async def get_devices(request: Request) -> Response:
    """GET /_matrix/client/v3/devices"""
    hs = services_of(request, DeviceServices)
    requester = await require_user(request)
    devices = await hs.accounts.get_devices(requester)
    return json_response({"devices": [device_json(d) for d in devices]})


async def get_device(request: Request) -> Response:
    """GET /_matrix/client/v3/devices/{deviceId}"""
    hs = services_of(request, DeviceServices)
    requester = await require_user(request)
    device = await hs.accounts.get_device(requester, request.path_params["device_id"])
    return json_response(device_json(device))


class UpdateDeviceBody(RequestBody):
    display_name: str | None = None


async def put_device(request: Request) -> Response:
    """PUT /_matrix/client/v3/devices/{deviceId}"""
    hs = services_of(request, DeviceServices)
    requester = await require_user(request)
    body = await parse_body(request, UpdateDeviceBody)
    created = await hs.accounts.update_device(
        requester, request.path_params["device_id"], body.display_name
    )
    # spec v1.17: 201 when an application service created the device.
    return json_response({}, status_code=201 if created else 200)


class DeleteDeviceBody(RequestBody):
    auth: dict[str, Any] | None = None


async def delete_device(request: Request) -> Response:
    """DELETE /_matrix/client/v3/devices/{deviceId}"""
    hs = services_of(request, DeviceServices)
    requester = await require_user(request)
    body = await parse_body_or_empty(request, DeleteDeviceBody)
    challenge = await hs.accounts.delete_devices(
        requester, [request.path_params["device_id"]], body.auth, uia_fingerprint(request)
    )
    if challenge is not None:
        return challenge_response(challenge)
    return json_response({})


class DeleteDevicesBody(RequestBody):
    devices: list[str]
    auth: dict[str, Any] | None = None


async def post_delete_devices(request: Request) -> Response:
    """POST /_matrix/client/v3/delete_devices"""
    hs = services_of(request, DeviceServices)
    requester = await require_user(request)
    body = await parse_body(request, DeleteDevicesBody)
    challenge = await hs.accounts.delete_devices(
        requester, body.devices, body.auth, uia_fingerprint(request)
    )
    if challenge is not None:
        return challenge_response(challenge)
    return json_response({})


client_routes = [
    Route("/v3/devices", get_devices, methods=["GET"]),
    # Device IDs are client-chosen strings and may hold a '/': the last segment takes it.
    Route("/v3/devices/{device_id:path}", get_device, methods=["GET"]),
    Route("/v3/devices/{device_id:path}", put_device, methods=["PUT"]),
    Route("/v3/devices/{device_id:path}", delete_device, methods=["DELETE"]),
    Route("/v3/delete_devices", post_delete_devices, methods=["POST"]),
]
