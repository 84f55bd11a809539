"""Filters for /sync and /messages."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.ids import UserID
from homeserver.filters.service import FilterService
from homeserver.web.edge import json_response, read_json_object, require_user, services_of


@dataclass(frozen=True, slots=True)
class FilterServices:
    """What the routes of filters call (built by the composition root)."""

    filters: FilterService


async def post_filter(request: Request) -> Response:
    """POST /_matrix/client/v3/user/{userId}/filter"""
    hs = services_of(request, FilterServices)
    requester = await require_user(request)
    user_id = UserID.parse(request.path_params["user_id"])
    # The filter service validates the body against the spec's filter shape.
    body = await read_json_object(request)
    filter_id = await hs.filters.create_filter(requester, user_id, body)
    return json_response({"filter_id": filter_id})


async def get_filter(request: Request) -> Response:
    """GET /_matrix/client/v3/user/{userId}/filter/{filterId}"""
    hs = services_of(request, FilterServices)
    requester = await require_user(request)
    user_id = UserID.parse(request.path_params["user_id"])
    return json_response(
        await hs.filters.get_filter_for(requester, user_id, request.path_params["filter_id"])
    )


client_routes = [
    Route("/v3/user/{user_id}/filter", post_filter, methods=["POST"]),
    Route("/v3/user/{user_id}/filter/{filter_id}", get_filter, methods=["GET"]),
]
