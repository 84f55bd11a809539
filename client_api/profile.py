"""Profiles: display name and avatar URL."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.accounts.profile import ProfileService
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.web.edge import json_response, read_json_object, require_user, services_of


@dataclass(frozen=True, slots=True)
class ProfileServices:
    """What the routes of profiles call (built by the composition root)."""

    profiles: ProfileService


async def get_profile(request: Request) -> Response:
    """GET /_matrix/client/v3/profile/{userId}"""
    hs = services_of(request, ProfileServices)
    user_id = UserID.parse(request.path_params["user_id"])
    return json_response(await hs.profiles.get_profile_json(user_id))


async def get_profile_field(request: Request) -> Response:
    """GET /_matrix/client/v3/profile/{userId}/{keyName}"""
    hs = services_of(request, ProfileServices)
    user_id = UserID.parse(request.path_params["user_id"])
    return json_response(await hs.profiles.get_field(user_id, request.path_params["key_name"]))


async def put_profile_field(request: Request) -> Response:
    """PUT /_matrix/client/v3/profile/{userId}/{keyName}"""
    hs = services_of(request, ProfileServices)
    requester = await require_user(request)
    user_id = UserID.parse(request.path_params["user_id"])
    key = request.path_params["key_name"]
    body = await read_json_object(request)
    if key not in body:
        raise MatrixError(Codes.MISSING_PARAM, f"Missing parameter: {key}")
    await hs.profiles.set_field(requester, user_id, key, body[key])
    return json_response({})


async def delete_profile_field(request: Request) -> Response:
    """DELETE /_matrix/client/v3/profile/{userId}/{keyName}"""
    hs = services_of(request, ProfileServices)
    requester = await require_user(request)
    user_id = UserID.parse(request.path_params["user_id"])
    await hs.profiles.delete_field(requester, user_id, request.path_params["key_name"])
    return json_response({})


client_routes = [
    Route("/v3/profile/{user_id}", get_profile, methods=["GET"]),
    Route("/v3/profile/{user_id}/{key_name}", get_profile_field, methods=["GET"]),
    Route("/v3/profile/{user_id}/{key_name}", put_profile_field, methods=["PUT"]),
    Route("/v3/profile/{user_id}/{key_name}", delete_profile_field, methods=["DELETE"]),
]
