"""Send-to-device messaging (spec: PUT /sendToDevice)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.e2ee.to_device import ToDeviceService
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class ToDeviceServices:
    """What the routes of to-device messages call (built by the composition root)."""

    to_device: ToDeviceService


class SendToDeviceBody(RequestBody):
    # {user_id: {device_id or "*": content}}
    messages: dict[str, dict[str, dict[str, Any]]]


async def put_send_to_device(request: Request) -> Response:
    """PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}"""
    hs = services_of(request, ToDeviceServices)
    requester = await require_user(request)
    body = await parse_body(request, SendToDeviceBody)
    await hs.to_device.send(
        requester, request.path_params["event_type"], request.path_params["txn_id"], body.messages
    )
    return json_response({})


client_routes = [
    # A transaction ID may hold a `/` (sent as %2F): the last segment is a path.
    Route("/v3/sendToDevice/{event_type}/{txn_id:path}", put_send_to_device, methods=["PUT"]),
]
