"""Jumping to a date: the event of a room nearest a timestamp (spec v1.6, MSC3030)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID
from homeserver.rooms.timestamps import TimestampService
from homeserver.web.edge import json_response, query_int, require_user, services_of


@dataclass(frozen=True, slots=True)
class TimestampServices:
    """What the timestamp route calls (built by the composition root)."""

    timestamps: TimestampService


async def get_timestamp_to_event(request: Request) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event"""
    hs = services_of(request, TimestampServices)
    requester = await require_user(request)
    room_id = RoomID.parse(request.path_params["room_id"])
    ts = query_int(request, "ts", None, minimum=0)
    if ts is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: ts")
    direction = request.query_params.get("dir")
    if direction is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing parameter: dir")
    if direction not in ("f", "b"):
        raise MatrixError(Codes.INVALID_PARAM, "dir must be 'f' or 'b'")
    result = await hs.timestamps.closest_event(requester, room_id, ts, direction == "f")
    return json_response(result)


client_routes = [
    Route("/v1/rooms/{room_id}/timestamp_to_event", get_timestamp_to_event, methods=["GET"]),
    Route(
        "/unstable/org.matrix.msc3030/rooms/{room_id}/timestamp_to_event",
        get_timestamp_to_event,
        methods=["GET"],
    ),
]
