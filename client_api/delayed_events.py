"""Delayed events (MSC4140): scheduling through the send and state endpoints, and the
management endpoints under /unstable/org.matrix.msc4140/delayed_events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import Requester
from homeserver.rooms.delayed import DelayedEventService
from homeserver.web.edge import (
    RequestBody,
    json_response,
    parse_body,
    query_int,
    require_user,
    services_of,
)

DELAY_PARAM = "org.matrix.msc4140.delay"
_BASE = "/unstable/org.matrix.msc4140/delayed_events"


@dataclass(frozen=True, slots=True)
class DelayedEventServices:
    """What the routes of delayed events call (built by the composition root)."""

    delayed_events: DelayedEventService


def delay_of(request: Request) -> int | None:
    """The ``org.matrix.msc4140.delay`` of a send or state request (ms), if any; the send
    and state routes (``client_api/rooms.py``) schedule the event when it is given."""
    if DELAY_PARAM not in request.query_params:
        return None
    return query_int(request, DELAY_PARAM, minimum=0)


async def get_delayed_events(request: Request) -> Response:
    """GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events"""
    hs = services_of(request, DelayedEventServices)
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
    hs = services_of(request, DelayedEventServices)
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
