"""Event relationships and threads (spec: "Relationships API", "Querying threads in a room")."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID
from homeserver.rooms.relations import RelationsService
from homeserver.web.edge import items_response, query_bool, query_int, require_user, services_of


@dataclass(frozen=True, slots=True)
class RelationServices:
    """What the routes of relations and threads call (built by the composition root)."""

    relations: RelationsService


async def _get_relations(request: Request) -> Response:
    hs = services_of(request, RelationServices)
    requester = await require_user(request)
    q = request.query_params
    direction = q.get("dir", "b")
    if direction not in ("b", "f"):
        raise MatrixError(Codes.INVALID_PARAM, "dir must be 'b' or 'f'")
    recurse = query_bool(request, "recurse") if "recurse" in q else None
    return items_response(
        await hs.relations.relations(
            requester,
            RoomID.parse(request.path_params["room_id"]),
            EventID.parse(request.path_params["event_id"]),
            rel_type=request.path_params.get("rel_type"),
            event_type=request.path_params.get("event_type"),
            from_token=q.get("from"),
            to_token=q.get("to"),
            backwards=direction == "b",
            limit=query_int(request, "limit", None, minimum=1),
            recurse=recurse,
        ),
        "relations",
    )


async def get_relations(request: Request) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}"""
    return await _get_relations(request)


async def get_relations_with_rel_type(request: Request) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}"""
    return await _get_relations(request)


async def get_relations_with_rel_type_and_event_type(request: Request) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"""
    return await _get_relations(request)


async def get_threads(request: Request) -> Response:
    """GET /_matrix/client/v1/rooms/{roomId}/threads"""
    hs = services_of(request, RelationServices)
    requester = await require_user(request)
    include = request.query_params.get("include", "all")
    if include not in ("all", "participated"):
        raise MatrixError(Codes.INVALID_PARAM, "include must be 'all' or 'participated'")
    return items_response(
        await hs.relations.threads(
            requester,
            RoomID.parse(request.path_params["room_id"]),
            participated_only=include == "participated",
            from_token=request.query_params.get("from"),
            limit=query_int(request, "limit", None, minimum=1),
        ),
        "threads",
    )


_R = "/v1/rooms/{room_id}"
client_routes = [
    Route(f"{_R}/relations/{{event_id}}", get_relations, methods=["GET"]),
    Route(
        f"{_R}/relations/{{event_id}}/{{rel_type}}", get_relations_with_rel_type, methods=["GET"]
    ),
    Route(
        f"{_R}/relations/{{event_id}}/{{rel_type}}/{{event_type}}",
        get_relations_with_rel_type_and_event_type,
        methods=["GET"],
    ),
    Route(f"{_R}/threads", get_threads, methods=["GET"]),
]
