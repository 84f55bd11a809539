"""Presence (spec: presence)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.ids import UserID
from homeserver.ephemeral.presence import PresenceService
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class PresenceServices:
    """What the routes of presence call (built by the composition root)."""

    presence: PresenceService


class PresenceBody(RequestBody):
    presence: Literal["online", "unavailable", "offline"]
    status_msg: str | None = None


async def put_presence(request: Request) -> Response:
    """PUT /_matrix/client/v3/presence/{userId}/status"""
    hs = services_of(request, PresenceServices)
    requester = await require_user(request)
    user_id = UserID.parse(request.path_params["user_id"])
    body = await parse_body(request, PresenceBody)
    await hs.presence.set_presence(
        requester,
        user_id,
        body.presence,
        body.status_msg,
        status_msg_given="status_msg" in body.model_fields_set,
    )
    return json_response({})


async def get_presence(request: Request) -> Response:
    """GET /_matrix/client/v3/presence/{userId}/status"""
    hs = services_of(request, PresenceServices)
    requester = await require_user(request)
    user_id = UserID.parse(request.path_params["user_id"])
    return json_response(await hs.presence.get_presence(requester, user_id))


client_routes = [
    Route("/v3/presence/{user_id}/status", put_presence, methods=["PUT"]),
    Route("/v3/presence/{user_id}/status", get_presence, methods=["GET"]),
]
