"""Our published room directory, for other servers (their users' /publicRooms?server=us)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from client_api.directory import PublicRoomsBody, search_public_rooms
from federation.edge import authenticated_origin
from homeserver.core.errors import Codes, MatrixError
from homeserver.rooms.directory import DirectoryService
from homeserver.web.edge import json_response, query_int, services_of, validate_body


@dataclass(frozen=True, slots=True)
class PublicRoomServices:
    """What the federation room directory routes call (built by the composition root)."""

    directory: DirectoryService


async def get_public_rooms(request: Request) -> Response:
    """GET /_matrix/federation/v1/publicRooms"""
    hs = services_of(request, PublicRoomServices)
    await authenticated_origin(request)
    result = await hs.directory.public_rooms(
        limit=query_int(request, "limit", None, minimum=0),
        since=request.query_params.get("since"),
        search_term=None,
        room_types=None,
    )
    return json_response(result)


async def post_public_rooms(request: Request) -> Response:
    """POST /_matrix/federation/v1/publicRooms"""
    hs = services_of(request, PublicRoomServices)
    _, content = await authenticated_origin(request)
    if not isinstance(content, dict):
        raise MatrixError(Codes.BAD_JSON, "The body must be a JSON object")
    body = validate_body(content, PublicRoomsBody)
    return json_response(await search_public_rooms(hs.directory, body))


routes = [
    Route("/v1/publicRooms", get_public_rooms, methods=["GET"]),
    Route("/v1/publicRooms", post_public_rooms, methods=["POST"]),
]
