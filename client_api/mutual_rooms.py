"""Rooms shared with another user (spec v1.19, MSC2666)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.rooms.mutual import MutualRooms
from homeserver.web.edge import json_response, require_user, services_of


@dataclass(frozen=True, slots=True)
class MutualRoomServices:
    """What the mutual rooms route calls (built by the composition root)."""

    mutual_rooms: MutualRooms


async def get_mutual_rooms(request: Request) -> Response:
    """GET /_matrix/client/v1/mutual_rooms"""
    hs = services_of(request, MutualRoomServices)
    requester = await require_user(request)
    raw = request.query_params.get("user_id")
    if raw is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: user_id")
    other = UserID.parse(raw)
    since = request.query_params.get("from")
    return json_response(await hs.mutual_rooms.mutual_rooms(requester, other, since))


client_routes = [
    Route("/v1/mutual_rooms", get_mutual_rooms, methods=["GET"]),
    # MSC2666's unstable name, which clients written before v1.19 call.
    Route("/unstable/uk.half-shot.msc2666/user/mutual_rooms", get_mutual_rooms, methods=["GET"]),
]
