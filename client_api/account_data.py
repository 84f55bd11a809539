"""Account data, global and per room, and room tags (spec: Client Config, Room Tagging)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.accounts.account_data import AccountDataService
from homeserver.core.ids import RoomID, UserID
from homeserver.web.edge import (
    RequestBody,
    item_response,
    json_response,
    parse_body,
    read_json_object,
    require_user,
    services_of,
)


@dataclass(frozen=True, slots=True)
class AccountDataServices:
    """What the routes of account data and room tags call (built by the composition root)."""

    account_data: AccountDataService


class TagBody(RequestBody):
    model_config = ConfigDict(extra="allow")  # clients may store their own keys
    order: int | float | None = Field(default=None, ge=0, le=1)  # 1 is echoed as 1, not 1.0


async def get_account_data(request: Request) -> Response:
    """GET /_matrix/client/v3/user/{userId}/account_data/{type}"""
    hs = services_of(request, AccountDataServices)
    requester = await require_user(request)
    return item_response(
        await hs.account_data.get_account_data(
            requester, UserID.parse(request.path_params["user_id"]), request.path_params["type"]
        ),
        "account data",
    )


async def put_account_data(request: Request) -> Response:
    """PUT /_matrix/client/v3/user/{userId}/account_data/{type}"""
    hs = services_of(request, AccountDataServices)
    requester = await require_user(request)
    user_id = UserID.parse(request.path_params["user_id"])
    content = await read_json_object(request)
    await hs.account_data.set_account_data(requester, user_id, request.path_params["type"], content)
    return json_response({})


async def get_room_account_data(request: Request) -> Response:
    """GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"""
    hs = services_of(request, AccountDataServices)
    requester = await require_user(request)
    return item_response(
        await hs.account_data.get_room_account_data(
            requester,
            UserID.parse(request.path_params["user_id"]),
            RoomID.parse(request.path_params["room_id"]),
            request.path_params["type"],
        ),
        "room account data",
    )


async def put_room_account_data(request: Request) -> Response:
    """PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"""
    hs = services_of(request, AccountDataServices)
    requester = await require_user(request)
    user_id = UserID.parse(request.path_params["user_id"])
    room_id = RoomID.parse(request.path_params["room_id"])
    content = await read_json_object(request)
    await hs.account_data.set_room_account_data(
        requester, user_id, room_id, request.path_params["type"], content
    )
    return json_response({})


async def get_tags(request: Request) -> Response:
    """GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags"""
    hs = services_of(request, AccountDataServices)
    requester = await require_user(request)
    tags = await hs.account_data.get_room_tags(
        requester,
        UserID.parse(request.path_params["user_id"]),
        RoomID.parse(request.path_params["room_id"]),
    )
    return json_response({"tags": tags})


async def put_tag(request: Request) -> Response:
    """PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"""
    hs = services_of(request, AccountDataServices)
    requester = await require_user(request)
    body = await parse_body(request, TagBody)
    await hs.account_data.set_room_tag(
        requester,
        UserID.parse(request.path_params["user_id"]),
        RoomID.parse(request.path_params["room_id"]),
        request.path_params["tag"],
        body.model_dump(exclude_unset=True),
    )
    return json_response({})


async def delete_tag(request: Request) -> Response:
    """DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"""
    hs = services_of(request, AccountDataServices)
    requester = await require_user(request)
    await hs.account_data.delete_room_tag(
        requester,
        UserID.parse(request.path_params["user_id"]),
        RoomID.parse(request.path_params["room_id"]),
        request.path_params["tag"],
    )
    return json_response({})


# Types and tags may hold a `/` (sent as %2F): a last {name:path} segment.
client_routes = [
    Route("/v3/user/{user_id}/account_data/{type:path}", get_account_data, methods=["GET"]),
    Route("/v3/user/{user_id}/account_data/{type:path}", put_account_data, methods=["PUT"]),
    Route(
        "/v3/user/{user_id}/rooms/{room_id}/account_data/{type:path}",
        get_room_account_data,
        methods=["GET"],
    ),
    Route(
        "/v3/user/{user_id}/rooms/{room_id}/account_data/{type:path}",
        put_room_account_data,
        methods=["PUT"],
    ),
    Route("/v3/user/{user_id}/rooms/{room_id}/tags", get_tags, methods=["GET"]),
    Route("/v3/user/{user_id}/rooms/{room_id}/tags/{tag:path}", put_tag, methods=["PUT"]),
    Route("/v3/user/{user_id}/rooms/{room_id}/tags/{tag:path}", delete_tag, methods=["DELETE"]),
]
