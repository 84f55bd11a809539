"""Queries of another server about ours: profiles and room aliases."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from federation.edge import authenticated_origin
from homeserver.accounts.profile import ProfileService
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomAlias, UserID
from homeserver.rooms.directory import DirectoryService
from homeserver.web.edge import json_response, services_of


@dataclass(frozen=True, slots=True)
class QueryServices:
    """What the federation query routes call (built by the composition root)."""

    profiles: ProfileService
    directory: DirectoryService
    server_name: str


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if value is None:
        raise MatrixError(Codes.MISSING_PARAM, f"Missing query parameter: {name}")
    return value


async def query_profile(request: Request) -> Response:
    """GET /_matrix/federation/v1/query/profile"""
    hs = services_of(request, QueryServices)
    await authenticated_origin(request)
    user_id = UserID.parse(_required(request, "user_id"))
    if user_id.server_name != hs.server_name:
        raise MatrixError(Codes.INVALID_PARAM, "The user is not on this server")
    field = request.query_params.get("field")
    if field is None:
        return json_response(await hs.profiles.get_profile_json(user_id))
    profile = await hs.profiles.get_profile_json(user_id)
    return json_response({field: profile[field]} if field in profile else {})


async def query_directory(request: Request) -> Response:
    """GET /_matrix/federation/v1/query/directory"""
    hs = services_of(request, QueryServices)
    await authenticated_origin(request)
    alias = RoomAlias.parse(_required(request, "room_alias"))
    if alias.server_name != hs.server_name:
        raise MatrixError(Codes.NOT_FOUND, "The room alias is not on this server")
    room_id, servers = await hs.directory.resolve_alias(alias)
    return json_response({"room_id": room_id, "servers": servers})


routes = [
    Route("/v1/query/profile", query_profile, methods=["GET"]),
    Route("/v1/query/directory", query_directory, methods=["GET"]),
]
