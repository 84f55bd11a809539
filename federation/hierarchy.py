"""Our spaces, for other servers (their users' /hierarchy of a space with rooms here)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from federation.edge import authenticated_origin
from homeserver.core.ids import RoomID
from homeserver.rooms.hierarchy import SpaceHierarchyService
from homeserver.web.edge import items_response, query_bool, services_of


@dataclass(frozen=True, slots=True)
class FederationHierarchyServices:
    """What the federation space hierarchy route calls (built by the composition root)."""

    hierarchy: SpaceHierarchyService


async def get_hierarchy(request: Request) -> Response:
    """GET /_matrix/federation/v1/hierarchy/{roomId}"""
    hs = services_of(request, FederationHierarchyServices)
    origin, _ = await authenticated_origin(request)
    result = await hs.hierarchy.federation_hierarchy(
        origin,
        RoomID.parse(request.path_params["room_id"]),
        suggested_only=query_bool(request, "suggested_only"),
    )
    return items_response(result, "federation hierarchy")


routes = [Route("/v1/hierarchy/{room_id}", get_hierarchy, methods=["GET"])]
