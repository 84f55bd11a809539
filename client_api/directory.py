"""Room aliases and the public room directory (spec: directory, list_public_rooms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomAlias, RoomID, is_valid_server_name
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.core.types import JsonDict
from homeserver.rooms.directory import DirectoryService
from homeserver.rooms.remote_directory import RemoteDirectories, RemoteRoomsQuery
from homeserver.web.edge import (
    RequestBody,
    json_response,
    parse_body,
    query_int,
    require_user,
    services_of,
)


@dataclass(frozen=True, slots=True)
class DirectoryServices:
    """What the routes of room aliases and the room directory call."""

    directory: DirectoryService
    server_name: str
    ratelimiter: RateLimiter | None = None
    remote: RemoteDirectories | None = None  # other servers' directories (federation on)


class AliasBody(RequestBody):
    room_id: str


class VisibilityBody(RequestBody):
    visibility: Literal["public", "private"]


class PublicRoomsFilter(RequestBody):
    generic_search_term: str | None = None
    room_types: list[str | None] | None = None


class PublicRoomsBody(RequestBody):
    limit: int | None = Field(default=None, ge=0)
    since: str | None = None
    filter: PublicRoomsFilter | None = None
    include_all_networks: bool = False
    third_party_instance_id: str | None = None


def _alias(request: Request) -> RoomAlias:
    return RoomAlias.parse(request.path_params["room_alias"])


async def get_alias(request: Request) -> Response:
    """GET /_matrix/client/v3/directory/room/{roomAlias}"""
    hs = services_of(request, DirectoryServices)
    room_id, servers = await hs.directory.resolve_alias(_alias(request))
    return json_response({"room_id": room_id, "servers": servers})


async def put_alias(request: Request) -> Response:
    """PUT /_matrix/client/v3/directory/room/{roomAlias}"""
    hs = services_of(request, DirectoryServices)
    requester = await require_user(request)
    body = await parse_body(request, AliasBody)
    await hs.directory.create_alias(requester, _alias(request), RoomID.parse(body.room_id))
    return json_response({})


async def delete_alias(request: Request) -> Response:
    """DELETE /_matrix/client/v3/directory/room/{roomAlias}"""
    hs = services_of(request, DirectoryServices)
    requester = await require_user(request)
    await hs.directory.delete_alias(requester, _alias(request))
    return json_response({})


async def get_room_aliases(request: Request) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/aliases"""
    hs = services_of(request, DirectoryServices)
    requester = await require_user(request)
    aliases = await hs.directory.room_aliases(
        requester, RoomID.parse(request.path_params["room_id"])
    )
    return json_response({"aliases": aliases})


async def get_room_visibility(request: Request) -> Response:
    """GET /_matrix/client/v3/directory/list/room/{roomId}"""
    hs = services_of(request, DirectoryServices)
    visibility = await hs.directory.get_visibility(RoomID.parse(request.path_params["room_id"]))
    return json_response({"visibility": visibility})


async def put_room_visibility(request: Request) -> Response:
    """PUT /_matrix/client/v3/directory/list/room/{roomId}"""
    hs = services_of(request, DirectoryServices)
    requester = await require_user(request)
    body = await parse_body(request, VisibilityBody)
    await hs.directory.set_visibility(
        requester, RoomID.parse(request.path_params["room_id"]), body.visibility
    )
    return json_response({})


async def put_network_visibility(request: Request) -> Response:
    """PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}"""
    hs = services_of(request, DirectoryServices)
    requester = await require_user(request)
    body = await parse_body(request, VisibilityBody)
    network_id = request.path_params["network_id"]
    if not network_id or len(network_id) > 255:
        raise MatrixError(Codes.INVALID_PARAM, "Invalid network ID")
    await hs.directory.set_network_visibility(
        requester, network_id, RoomID.parse(request.path_params["room_id"]), body.visibility
    )
    return json_response({})


def _remote_server(hs: DirectoryServices, request: Request) -> str | None:
    """The other server whose directory is asked for, or None for ours."""
    server = request.query_params.get("server")
    if server is None or server == hs.server_name:
        return None
    if not is_valid_server_name(server):
        raise MatrixError(Codes.INVALID_PARAM, "Invalid server name")
    if hs.remote is None:
        raise MatrixError(Codes.UNKNOWN, "Other servers' directories need federation", status=400)
    return server


async def get_public_rooms(request: Request) -> Response:
    """GET /_matrix/client/v3/publicRooms"""
    hs = services_of(request, DirectoryServices)
    if hs.ratelimiter is not None:  # no token needed: limited per client address
        client = request.client
        await hs.ratelimiter.check(Action.PUBLIC_ROOMS, f"ip:{client.host if client else ''}")
    server = _remote_server(hs, request)
    limit = query_int(request, "limit", None, minimum=0)
    since = request.query_params.get("since")
    if server is not None:
        assert hs.remote is not None
        query = RemoteRoomsQuery(limit, since, None, None, False, None)
        return json_response(await hs.remote.public_rooms(server, query))
    result = await hs.directory.public_rooms(
        limit=limit, since=since, search_term=None, room_types=None
    )
    return json_response(result)


async def post_public_rooms(request: Request) -> Response:
    """POST /_matrix/client/v3/publicRooms"""
    hs = services_of(request, DirectoryServices)
    requester = await require_user(request)
    if hs.ratelimiter is not None:
        await hs.ratelimiter.check(
            Action.PUBLIC_ROOMS, requester.user_id, exempt=requester.is_admin
        )
    server = _remote_server(hs, request)
    body = await parse_body(request, PublicRoomsBody)
    if server is not None:
        assert hs.remote is not None
        room_filter = body.filter or PublicRoomsFilter()
        types: Any = room_filter.room_types
        query = RemoteRoomsQuery(
            limit=body.limit,
            since=body.since,
            search_term=room_filter.generic_search_term,
            room_types=tuple(types) if types is not None else None,
            include_all_networks=body.include_all_networks,
            third_party_instance_id=body.third_party_instance_id,
        )
        return json_response(await hs.remote.public_rooms(server, query))
    return json_response(await search_public_rooms(hs.directory, body))


async def search_public_rooms(directory: DirectoryService, body: PublicRoomsBody) -> JsonDict:
    """A page of the room directory for a ``POST publicRooms`` body: the Client-Server and
    the Server-Server API take the same body."""
    room_filter = body.filter or PublicRoomsFilter()
    room_types: Any = room_filter.room_types
    return await directory.public_rooms(
        limit=body.limit,
        since=body.since,
        search_term=room_filter.generic_search_term,
        room_types=tuple(room_types) if room_types is not None else None,
        third_party_instance_id=body.third_party_instance_id,
        include_all_networks=body.include_all_networks,
    )


client_routes = [
    Route("/v3/directory/room/{room_alias}", get_alias, methods=["GET"]),
    Route("/v3/directory/room/{room_alias}", put_alias, methods=["PUT"]),
    Route("/v3/directory/room/{room_alias}", delete_alias, methods=["DELETE"]),
    Route("/v3/rooms/{room_id}/aliases", get_room_aliases, methods=["GET"]),
    Route("/v3/directory/list/room/{room_id}", get_room_visibility, methods=["GET"]),
    Route("/v3/directory/list/room/{room_id}", put_room_visibility, methods=["PUT"]),
    Route(
        "/v3/directory/list/appservice/{network_id}/{room_id}",
        put_network_visibility,
        methods=["PUT"],
    ),
    Route("/v3/publicRooms", get_public_rooms, methods=["GET"]),
    Route("/v3/publicRooms", post_public_rooms, methods=["POST"]),
]
