"""Voice over IP: the TURN servers for calls."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.voip.turn import TurnService
from homeserver.web.edge import json_response, require_user, services_of


@dataclass(frozen=True, slots=True)
class VoipServices:
    """What the route of VoIP calls (built by the composition root)."""

    turn: TurnService


async def get_turn_server(request: Request) -> Response:
    """GET /_matrix/client/v3/voip/turnServer"""
    hs = services_of(request, VoipServices)
    requester = await require_user(request)
    return json_response(hs.turn.credentials(requester))


client_routes = [
    Route("/v3/voip/turnServer", get_turn_server, methods=["GET"]),
    Route("/r0/voip/turnServer", get_turn_server, methods=["GET"]),
]
