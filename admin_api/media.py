"""The admin API on media: Synapse's ``/_synapse/admin/v1/media...``, ``/v1/users/{u}/media``,
``/v1/room/{r}/media``, quarantine and ``/v1/statistics/users/media`` paths and shapes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.admin.media import AdminMedia, MediaQuery
from homeserver.admin.users import AdminUsers
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.storage.admin_media import MEDIA_ORDERS, STATS_ORDERS
from homeserver.web.edge import json_response, query_bool, query_int, require_user, services_of

Endpoint = Callable[[Request], Awaitable[Response]]
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TIMESTAMP = 2**53


@dataclass(frozen=True, slots=True)
class AdminMediaServices:
    media: AdminMedia
    users: AdminUsers


def _media(request: Request) -> AdminMedia:
    return services_of(request, AdminMediaServices).media


def _user_id(request: Request) -> UserID:
    return services_of(request, AdminMediaServices).users.local_user(request.path_params["user_id"])


def _room_id(request: Request) -> RoomID:
    raw = request.path_params["room_id"]
    try:
        return RoomID.parse(raw)
    except ValueError:
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid room ID: {raw}") from None


def _query(request: Request, orders: Collection[str], default_order: str) -> MediaQuery:
    order_by = request.query_params.get("order_by")
    if order_by is not None and order_by not in orders:
        raise MatrixError(Codes.INVALID_PARAM, f"Unknown order_by: {order_by}")
    direction = request.query_params.get("dir")
    if direction not in (None, "f", "b"):
        raise MatrixError(Codes.INVALID_PARAM, "Query parameter dir must be f or b")
    offset = query_int(request, "from", 0, minimum=0)
    limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT)
    assert offset is not None and limit is not None
    # Synapse: neither given, newest first; otherwise as asked, forwards by default.
    backwards = direction == "b" or (order_by is None and direction is None)
    return MediaQuery(offset, limit, order_by or default_order, backwards)


async def user_media(request: Request) -> Response:
    """GET and DELETE /_synapse/admin/v1/users/{userId}/media"""
    requester = await require_user(request)
    user_id = _user_id(request)
    query = _query(request, MEDIA_ORDERS, "created_ts")
    if request.method == "DELETE":
        deleted = await _media(request).delete_user_media(requester, user_id, query)
        return json_response({"deleted_media": deleted, "total": len(deleted)})
    found, total, next_offset = await _media(request).user_media(requester, user_id, query)
    out: dict[str, object] = {"media": found, "total": total}
    if next_offset is not None:
        out["next_token"] = next_offset
    return json_response(out)


async def room_media(request: Request) -> Response:
    """GET /_synapse/admin/v1/room/{roomId}/media"""
    requester = await require_user(request)
    return json_response(await _media(request).room_media(requester, _room_id(request)))


def _quarantine(on: bool) -> Endpoint:
    async def quarantine(request: Request) -> Response:
        """POST /_synapse/admin/v1/media/{un,}quarantine/{serverName}/{mediaId}"""
        requester = await require_user(request)
        await _media(request).quarantine_one(
            requester, request.path_params["server_name"], request.path_params["media_id"], on
        )
        return json_response({})

    return quarantine


async def quarantine_room(request: Request) -> Response:
    """POST /_synapse/admin/v1/room/{roomId}/media/quarantine"""
    requester = await require_user(request)
    count = await _media(request).quarantine_room(requester, _room_id(request))
    return json_response({"num_quarantined": count})


async def quarantine_user(request: Request) -> Response:
    """POST /_synapse/admin/v1/user/{userId}/media/quarantine"""
    requester = await require_user(request)
    count = await _media(request).quarantine_user(requester, _user_id(request))
    return json_response({"num_quarantined": count})


def _protect(on: bool) -> Endpoint:
    async def protect(request: Request) -> Response:
        """POST /_synapse/admin/v1/media/{un,}protect/{mediaId}"""
        requester = await require_user(request)
        await _media(request).protect(requester, request.path_params["media_id"], on)
        return json_response({})

    return protect


async def media_one(request: Request) -> Response:
    """GET and DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}"""
    requester = await require_user(request)
    if request.method == "GET":
        info = await _media(request).media_info(
            requester, request.path_params["server_name"], request.path_params["media_id"]
        )
        return json_response({"media_info": info})
    deleted = await _media(request).delete_one(
        requester, request.path_params["server_name"], request.path_params["media_id"]
    )
    return json_response({"deleted_media": deleted, "total": len(deleted)})


async def delete_by_age(request: Request) -> Response:
    """POST /_synapse/admin/v1/media/delete (and /v1/media/{serverName}/delete)"""
    requester = await require_user(request)
    server_name = request.path_params.get("server_name")
    if server_name is not None and server_name != _media(request).server_name:
        raise MatrixError(Codes.INVALID_PARAM, "Only local media can be deleted")
    before_ts = query_int(request, "before_ts", None, minimum=0, maximum=MAX_TIMESTAMP)
    if before_ts is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: before_ts")
    size_gt = query_int(request, "size_gt", 0, minimum=0)
    assert size_gt is not None
    keep_profiles = query_bool(request, "keep_profiles", True)
    deleted = await _media(request).delete_by_age(requester, before_ts, size_gt, keep_profiles)
    return json_response({"deleted_media": deleted, "total": len(deleted)})


async def purge_media_cache(request: Request) -> Response:
    """POST /_synapse/admin/v1/purge_media_cache?before_ts=: other servers' media cached here
    and not asked for since then."""
    requester = await require_user(request)
    before_ts = query_int(request, "before_ts", None, minimum=0, maximum=MAX_TIMESTAMP)
    if before_ts is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: before_ts")
    return json_response(await _media(request).purge_media_cache(requester, before_ts))


async def statistics(request: Request) -> Response:
    """GET /_synapse/admin/v1/statistics/users/media"""
    requester = await require_user(request)
    query = _query(request, STATS_ORDERS, "user_id")
    if request.query_params.get("dir") is None:
        query = MediaQuery(query.offset, query.limit, query.order_by, False)
    from_ts = query_int(request, "from_ts", None, minimum=0)
    until_ts = query_int(request, "until_ts", None, minimum=0)
    if until_ts is not None and until_ts <= (from_ts or 0):
        raise MatrixError(Codes.INVALID_PARAM, "Query parameter until_ts must be after from_ts")
    search = request.query_params.get("search_term")
    if search is not None and not search:
        raise MatrixError(Codes.INVALID_PARAM, "search_term must not be empty")
    users, total, next_offset = await _media(request).statistics(
        requester, query, from_ts, until_ts, search
    )
    out: dict[str, object] = {"users": users, "total": total}
    if next_offset is not None:
        out["next_token"] = next_offset
    return json_response(out)


routes = [
    Route("/v1/users/{user_id}/media", user_media, methods=["GET", "DELETE"]),
    Route("/v1/room/{room_id}/media", room_media, methods=["GET"]),
    Route("/v1/room/{room_id}/media/quarantine", quarantine_room, methods=["POST"]),
    Route("/v1/user/{user_id}/media/quarantine", quarantine_user, methods=["POST"]),
    Route(
        "/v1/media/quarantine/{server_name}/{media_id}",
        _quarantine(True),
        methods=["POST"],
    ),
    Route(
        "/v1/media/unquarantine/{server_name}/{media_id}",
        _quarantine(False),
        methods=["POST"],
    ),
    Route("/v1/media/protect/{media_id}", _protect(True), methods=["POST"]),
    Route("/v1/media/unprotect/{media_id}", _protect(False), methods=["POST"]),
    Route("/v1/media/delete", delete_by_age, methods=["POST"]),
    Route("/v1/purge_media_cache", purge_media_cache, methods=["POST"]),
    Route("/v1/media/{server_name}/delete", delete_by_age, methods=["POST"]),
    Route("/v1/media/{server_name}/{media_id}", media_one, methods=["GET", "DELETE"]),
    # The older path of the room's quarantine.
    Route("/v1/quarantine_media/{room_id}", quarantine_room, methods=["POST"]),
    Route("/v1/statistics/users/media", statistics, methods=["GET"]),
]
