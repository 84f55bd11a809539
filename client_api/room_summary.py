"""Room summaries (MSC3266; spec v1.15)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.rooms.summary import RoomSummaryService
from homeserver.web.edge import access_token_of, json_response, require_user, services_of


@dataclass(frozen=True, slots=True)
class RoomSummaryServices:
    """What the route of room summaries calls (built by the composition root)."""

    room_summaries: RoomSummaryService


async def get_room_summary(request: Request) -> Response:
    """GET /_matrix/client/v1/room_summary/{roomIdOrAlias}"""
    hs = services_of(request, RoomSummaryServices)
    # spec: servers MAY answer without authentication (for rooms anyone may look at).
    user_id = (await require_user(request)).user_id if access_token_of(request) else None
    summary = await hs.room_summaries.summary(user_id, request.path_params["room"])
    return json_response(summary)


client_routes = [
    Route("/v1/room_summary/{room}", get_room_summary, methods=["GET"]),
    # MSC3266's unstable paths, which clients written before v1.15 use.
    Route("/unstable/im.nheko.summary/summary/{room}", get_room_summary, methods=["GET"]),
    Route("/unstable/im.nheko.summary/rooms/{room}/summary", get_room_summary, methods=["GET"]),
]
