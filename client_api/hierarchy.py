"""Spaces (spec: "Spaces", GET /rooms/{roomId}/hierarchy)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.ids import RoomID
from homeserver.rooms.hierarchy import SpaceHierarchyService
from homeserver.web.edge import items_response, query_bool, query_int, require_user, services_of


@dataclass(frozen=True, slots=True)
class HierarchyServices:
    """What the space hierarchy route calls (built by the composition root)."""

    hierarchy: SpaceHierarchyService


async def get_space_hierarchy(request: Request) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/hierarchy"""
    hs = services_of(request, HierarchyServices)
    requester = await require_user(request)
    result = await hs.hierarchy.hierarchy(
        requester.user_id,
        RoomID.parse(request.path_params["room_id"]),
        suggested_only=query_bool(request, "suggested_only"),
        max_depth=query_int(request, "max_depth", None, minimum=0),
        limit=query_int(request, "limit", None, minimum=1),
        from_token=request.query_params.get("from"),
    )
    return items_response(result, "hierarchy")


client_routes = [
    Route("/v1/rooms/{room_id}/hierarchy", get_space_hierarchy, methods=["GET"]),
]
