"""Delayed events (MSC4140): scheduling through the send and state endpoints, and the
management endpoints under /unstable/org.matrix.msc4140/delayed_events."""

from __future__ import annotations

from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.errors import Codes, MatrixError
from homeserver.types import JsonDict, Requester
from homeserver.web import (
    RequestBody,
    homeserver_of,
    json_response,
    parse_body,
    query_int,
    require_user,
)

DELAY_PARAM = "org.matrix.msc4140.delay"
_BASE = "/unstable/org.matrix.msc4140/delayed_events"


def delay_of(request: Request) -> int | None:
    """The ``org.matrix.msc4140.delay`` of a send or state request (ms), if any."""
    if DELAY_PARAM not in request.query_params:
        return None
    return query_int(request, DELAY_PARAM, minimum=0)


async def schedule(
    request: Request,
    requester: Requester,
    room_id: str,
    event_type: str,
    state_key: str | None,
    content: JsonDict,
    delay_ms: int,
) -> Response:
    """PUT .../send/{eventType}/{txnId} or .../state/{eventType}/{stateKey} with a delay."""
    hs = homeserver_of(request)
    delay_id = await hs.delayed_events.schedule(
        requester, room_id, event_type, state_key, content, delay_ms
    )
    return json_response({"delay_id": delay_id})


async def get_delayed_events(request: Request) -> Response:
    """GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events"""
    hs = homeserver_of(request)
    requester = await require_user(request)
    return json_response({"delayed_events": await hs.delayed_events.list_for_user(requester)})


class ActionBody(RequestBody):
    action: Literal["cancel", "restart", "send"]


async def update_delayed_event(request: Request) -> Response:
    """POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}"""
    requester = await require_user(request)
    body = await parse_body(request, ActionBody)
    return await _act(request, requester, body.action)


async def act_on_delayed_event(request: Request) -> Response:
    """POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}/{action}"""
    requester = await require_user(request)
    return await _act(request, requester, request.path_params["action"])


async def _act(request: Request, requester: Requester, action: str) -> Response:
    hs = homeserver_of(request)
    delay_id = request.path_params["delay_id"]
    if action == "cancel":
        await hs.delayed_events.cancel(requester, delay_id)
    elif action == "restart":
        await hs.delayed_events.restart(requester, delay_id)
    elif action == "send":
        await hs.delayed_events.send_now(requester, delay_id)
    else:
        raise MatrixError(Codes.UNRECOGNIZED, "Unrecognized request")
    return json_response({})


client_routes = [
    Route(_BASE, get_delayed_events, methods=["GET"]),
    Route(f"{_BASE}/{{delay_id}}", update_delayed_event, methods=["POST"]),
    Route(
        f"{_BASE}/{{delay_id}}/{{action:str}}",
        act_on_delayed_event,
        methods=["POST"],
    ),
]
