"""Typing notifications (spec: typing notifications)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.ids import RoomID, UserID
from homeserver.ephemeral.typing import TypingService
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class TypingServices:
    """What the routes of typing notifications call (built by the composition root)."""

    typing: TypingService


class TypingBody(RequestBody):
    typing: bool
    timeout: int | None = Field(default=None, ge=0)  # ms; optional when typing is false


async def put_typing(request: Request) -> Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}"""
    hs = services_of(request, TypingServices)
    requester = await require_user(request)
    room_id = RoomID.parse(request.path_params["room_id"])
    user_id = UserID.parse(request.path_params["user_id"])
    body = await parse_body(request, TypingBody)
    await hs.typing.set_typing(requester, room_id, user_id, body.typing, body.timeout)
    return json_response({})


client_routes = [
    Route("/v3/rooms/{room_id}/typing/{user_id}", put_typing, methods=["PUT"]),
]
