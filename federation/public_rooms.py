"""Our published room directory, for other servers (their users' /publicRooms?server=us)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from federation.edge import authenticated_origin
from homeserver.core.errors import Codes, MatrixError
from homeserver.rooms.directory import DirectoryService
from homeserver.web.edge import RequestBody, json_response, query_int, services_of, validate_body


@dataclass(frozen=True, slots=True)
class PublicRoomServices:
    """What the federation room directory routes call (built by the composition root)."""

    directory: DirectoryService


class PublicRoomsFilter(RequestBody):
    generic_search_term: str | None = None
    room_types: list[str | None] | None = None


class PublicRoomsBody(RequestBody):
    limit: int | None = Field(default=None, ge=0)
    since: str | None = None
    filter: PublicRoomsFilter | None = None
    include_all_networks: bool = False
    third_party_instance_id: str | None = None


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
    room_filter = body.filter or PublicRoomsFilter()
    room_types: Any = room_filter.room_types
    result = await hs.directory.public_rooms(
        limit=body.limit,
        since=body.since,
        search_term=room_filter.generic_search_term,
        room_types=tuple(room_types) if room_types is not None else None,
    )
    return json_response(result)


routes = [
    Route("/v1/publicRooms", get_public_rooms, methods=["GET"]),
    Route("/v1/publicRooms", post_public_rooms, methods=["POST"]),
]
