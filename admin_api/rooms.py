"""The admin API on rooms: Synapse's ``/_synapse/admin/{v1,v2}/rooms...``, ``/v1/join`` and
``make_room_admin`` paths and shapes."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.admin.room_tasks import AdminRoomTasks, DeleteRequest, RedactRequest
from homeserver.admin.rooms import ROOM_ORDERS, AdminRooms, RoomQuery
from homeserver.admin.users import AdminUsers
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID, UserID
from homeserver.core.json_limits import query_json
from homeserver.filters.matching import EventFilter
from homeserver.web.edge import (
    RequestBody,
    items_response,
    json_response,
    parse_body,
    query_bool,
    query_int,
    require_user,
    services_of,
)

DEFAULT_LIMIT = 100
DEFAULT_MESSAGES_LIMIT = 10  # as Synapse
MAX_LIMIT = 1000
MAX_TEXT_CHARS = 1000


@dataclass(frozen=True, slots=True)
class AdminRoomServices:
    rooms: AdminRooms
    tasks: AdminRoomTasks
    users: AdminUsers


def _rooms(request: Request) -> AdminRooms:
    return services_of(request, AdminRoomServices).rooms


def _tasks(request: Request) -> AdminRoomTasks:
    return services_of(request, AdminRoomServices).tasks


def _room_id(request: Request) -> RoomID:
    raw = request.path_params["room_id"]
    try:
        return RoomID.parse(raw)
    except ValueError:
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid room ID: {raw}") from None


def _optional_bool(request: Request, name: str) -> bool | None:
    return query_bool(request, name) if name in request.query_params else None


async def list_rooms(request: Request) -> Response:
    """GET /_synapse/admin/v1/rooms"""
    requester = await require_user(request)
    order_by = request.query_params.get("order_by", "name")
    if order_by not in ROOM_ORDERS:
        raise MatrixError(
            Codes.INVALID_PARAM, f"order_by must be one of {', '.join(sorted(ROOM_ORDERS))}"
        )
    direction = request.query_params.get("dir", "f")
    if direction not in ("f", "b"):
        raise MatrixError(Codes.INVALID_PARAM, "Query parameter dir must be f or b")
    search = request.query_params.get("search_term")
    if search is not None and (not search or len(search) > MAX_TEXT_CHARS):
        raise MatrixError(Codes.INVALID_PARAM, "search_term must be 1 to 1000 characters")
    offset = query_int(request, "from", 0, minimum=0)
    limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT)
    assert offset is not None and limit is not None
    query = RoomQuery(
        offset=offset,
        limit=limit,
        order_by=order_by,
        backwards=direction == "b",
        search_term=search,
        public_rooms=_optional_bool(request, "public_rooms"),
        empty_rooms=_optional_bool(request, "empty_rooms"),
    )
    return json_response(await _rooms(request).list_rooms(requester, query))


async def get_room(request: Request) -> Response:
    """GET /_synapse/admin/v1/rooms/{roomId}"""
    requester = await require_user(request)
    return json_response(await _rooms(request).room_details(requester, _room_id(request)))


async def get_members(request: Request) -> Response:
    """GET /_synapse/admin/v1/rooms/{roomId}/members"""
    requester = await require_user(request)
    members = await _rooms(request).members(requester, _room_id(request))
    return json_response({"members": members, "total": len(members)})


async def get_state(request: Request) -> Response:
    """GET /_synapse/admin/v1/rooms/{roomId}/state"""
    requester = await require_user(request)
    state = await _rooms(request).state(
        requester, _room_id(request), request.query_params.get("type")
    )
    return items_response({"state": state}, "admin room state")


async def get_messages(request: Request) -> Response:
    """GET /_synapse/admin/v1/rooms/{roomId}/messages"""
    requester = await require_user(request)
    direction = request.query_params.get("dir", "f")
    if direction not in ("b", "f"):
        raise MatrixError(Codes.INVALID_PARAM, "Query parameter dir must be f or b")
    event_filter = EventFilter()
    raw = request.query_params.get("filter")
    if raw is not None:
        data = query_json(raw, "filter")
        if not isinstance(data, dict):
            raise MatrixError(Codes.BAD_JSON, "filter must be a JSON object")
        event_filter = EventFilter.from_json(data)
    limit = query_int(request, "limit", DEFAULT_MESSAGES_LIMIT, minimum=0, maximum=MAX_LIMIT)
    assert limit is not None
    page = await _rooms(request).messages(
        requester,
        _room_id(request),
        from_token=request.query_params.get("from"),
        to_token=request.query_params.get("to"),
        backwards=direction == "b",
        limit=limit,
        event_filter=event_filter,
    )
    body: dict[str, object] = {"chunk": page.chunk, "start": page.start}
    if page.end is not None:
        body["end"] = page.end
    return items_response(body, "admin messages")


async def fetch_event(request: Request) -> Response:
    """GET /_synapse/admin/v1/fetch_event/{eventId}"""
    requester = await require_user(request)
    raw = request.path_params["event_id"]
    try:
        event_id = EventID.parse(raw)
    except ValueError:
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid event ID: {raw}") from None
    event = await _rooms(request).fetch_event(requester, event_id)
    return items_response({"event": event}, "admin event")


class RedactBody(RequestBody):
    rooms: list[str] = Field(max_length=1000)
    reason: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    limit: int = Field(default=1000, ge=1, le=100_000)
    use_admin: bool = False
    after_ts: int | None = Field(default=None, ge=0, le=2**53)
    before_ts: int | None = Field(default=None, ge=0, le=2**53)


async def redact_user(request: Request) -> Response:
    """POST /_synapse/admin/v1/user/{userId}/redact"""
    requester = await require_user(request)
    raw = request.path_params["user_id"]
    try:
        user_id = UserID.parse(raw)
    except ValueError:
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid user ID: {raw}") from None
    body = await parse_body(request, RedactBody)
    rooms = []
    for room in body.rooms:
        try:
            rooms.append(RoomID.parse(room))
        except ValueError:
            raise MatrixError(Codes.INVALID_PARAM, f"Invalid room ID: {room}") from None
    redact_id = await _tasks(request).redact_user_events(
        requester,
        user_id,
        RedactRequest(
            rooms=tuple(rooms),
            reason=body.reason,
            limit=body.limit,
            use_admin=body.use_admin,
            after_ts=body.after_ts,
            before_ts=body.before_ts,
        ),
    )
    return json_response({"redact_id": redact_id})


async def redact_status(request: Request) -> Response:
    """GET /_synapse/admin/v1/user/redact_status/{redactId}"""
    requester = await require_user(request)
    return json_response(
        await _tasks(request).redaction_status(requester, request.path_params["redact_id"])
    )


class BlockBody(RequestBody):
    block: bool


async def block(request: Request) -> Response:
    """GET and PUT /_synapse/admin/v1/rooms/{roomId}/block"""
    requester = await require_user(request)
    room_id = _room_id(request)
    rooms = _rooms(request)
    if request.method == "PUT":
        body = await parse_body(request, BlockBody)
        await rooms.set_block(requester, room_id, body.block)
        return json_response({"block": body.block})
    return json_response(await rooms.get_block(requester, room_id))


class JoinBody(RequestBody):
    user_id: str = Field(max_length=MAX_TEXT_CHARS)


def _local_user(request: Request, raw: str) -> UserID:
    return services_of(request, AdminRoomServices).users.local_user(raw)


async def join_user(request: Request) -> Response:
    """POST /_synapse/admin/v1/join/{roomIdOrAlias}"""
    requester = await require_user(request)
    body = await parse_body(request, JoinBody)
    user_id = _local_user(request, body.user_id)
    room_id = await _rooms(request).join_user(
        requester, request.path_params["room_id_or_alias"], user_id
    )
    return json_response({"room_id": room_id})


class MakeAdminBody(RequestBody):
    user_id: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)


async def make_room_admin(request: Request) -> Response:
    """POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin"""
    requester = await require_user(request)
    body = await parse_body(request, MakeAdminBody, empty_ok=True)
    user_id = requester.user_id if body.user_id is None else _local_user(request, body.user_id)
    await _rooms(request).make_room_admin(
        requester, request.path_params["room_id_or_alias"], user_id
    )
    return json_response({})


class DeleteBody(RequestBody):
    new_room_user_id: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    room_name: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    message: str | None = Field(default=None, max_length=10_000)
    block: bool = False
    purge: bool = True
    force_purge: bool = False


async def delete_room(request: Request) -> Response:
    """DELETE /_synapse/admin/v2/rooms/{roomId}; v1: the same, answered once done"""
    requester = await require_user(request)
    room_id = _room_id(request)
    body = await parse_body(request, DeleteBody, empty_ok=True)
    new_user = None
    if body.new_room_user_id is not None:
        try:
            new_user = UserID.parse(body.new_room_user_id)
        except ValueError:
            raise MatrixError(Codes.INVALID_PARAM, "new_room_user_id is not a user ID") from None
    delete_id = await _tasks(request).delete_room(
        requester,
        room_id,
        DeleteRequest(
            new_room_user_id=new_user,
            room_name=body.room_name,
            message=body.message,
            block=body.block,
            purge=body.purge,
            force_purge=body.force_purge,
        ),
    )
    if request.url.path.startswith("/_synapse/admin/v1/"):
        status = await _tasks(request).finish(requester, delete_id)
        if status["status"] != "complete":
            raise MatrixError(Codes.UNKNOWN, status["error"] or "The deletion failed", status=400)
        return json_response(status["shutdown_room"])
    return json_response({"delete_id": delete_id})


async def room_delete_status(request: Request) -> Response:
    """GET /_synapse/admin/v2/rooms/{roomId}/delete_status"""
    requester = await require_user(request)
    results = await _tasks(request).delete_statuses(requester, _room_id(request))
    return json_response({"results": results})


async def delete_status(request: Request) -> Response:
    """GET /_synapse/admin/v2/rooms/delete_status/{deleteId}"""
    requester = await require_user(request)
    return json_response(
        await _tasks(request).delete_status(requester, request.path_params["delete_id"])
    )


routes = [
    Route("/v1/rooms", list_rooms, methods=["GET"]),
    Route("/v2/rooms/delete_status/{delete_id}", delete_status, methods=["GET"]),
    Route("/v1/rooms/{room_id}", get_room, methods=["GET"]),
    Route("/v1/rooms/{room_id}/members", get_members, methods=["GET"]),
    Route("/v1/rooms/{room_id}/state", get_state, methods=["GET"]),
    Route("/v1/rooms/{room_id}/messages", get_messages, methods=["GET"]),
    Route("/v1/rooms/{room_id}/block", block, methods=["GET", "PUT"]),
    Route("/v1/rooms/{room_id_or_alias}/make_room_admin", make_room_admin, methods=["POST"]),
    Route("/v1/join/{room_id_or_alias}", join_user, methods=["POST"]),
    Route("/v1/fetch_event/{event_id}", fetch_event, methods=["GET"]),
    Route("/v1/user/redact_status/{redact_id}", redact_status, methods=["GET"]),
    Route("/v1/user/{user_id}/redact", redact_user, methods=["POST"]),
    Route("/v2/rooms/{room_id}", delete_room, methods=["DELETE"]),
    Route("/v1/rooms/{room_id}", delete_room, methods=["DELETE"]),
    Route("/v2/rooms/{room_id}/delete_status", room_delete_status, methods=["GET"]),
]
