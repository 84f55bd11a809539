"""The deprecated sync API that spec v1.19 still lists (older bridges and bots use it):
``/initialSync``, ``/events`` (with ``room_id``: peeking), ``/rooms/{roomId}/initialSync``,
``/events/{eventId}``."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.ids import EventID, RoomID
from homeserver.sync.legacy import LegacySync
from homeserver.web.edge import json_response, query_bool, query_int, require_user, services_of


@dataclass(frozen=True, slots=True)
class LegacySyncServices:
    """What the deprecated sync routes call (built by the composition root)."""

    legacy: LegacySync
    sync_timeout_max_ms: int


async def get_initial_sync(request: Request) -> Response:
    """GET /_matrix/client/v3/initialSync"""
    hs = services_of(request, LegacySyncServices)
    requester = await require_user(request)
    limit = query_int(request, "limit", None, minimum=0)
    archived = query_bool(request, "archived")
    return json_response(await hs.legacy.initial_sync(requester, limit, archived))


async def get_events(request: Request) -> Response:
    """GET /_matrix/client/v3/events"""
    hs = services_of(request, LegacySyncServices)
    requester = await require_user(request)
    timeout = query_int(request, "timeout", 0, minimum=0, maximum=hs.sync_timeout_max_ms) or 0
    raw_room = request.query_params.get("room_id")
    room_id = RoomID.parse(raw_room) if raw_room is not None else None
    since = request.query_params.get("from")
    limit = query_int(request, "limit", None, minimum=0)
    return json_response(await hs.legacy.events(requester, since, timeout, room_id, limit))


async def get_room_initial_sync(request: Request) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/initialSync"""
    hs = services_of(request, LegacySyncServices)
    requester = await require_user(request)
    room_id = RoomID.parse(request.path_params["room_id"])
    limit = query_int(request, "limit", None, minimum=0)
    return json_response(await hs.legacy.room_initial_sync(requester, room_id, limit))


async def get_event(request: Request) -> Response:
    """GET /_matrix/client/v3/events/{eventId}"""
    hs = services_of(request, LegacySyncServices)
    requester = await require_user(request)
    event_id = EventID.parse(request.path_params["event_id"])
    return json_response(await hs.legacy.get_event(requester, event_id))


client_routes = (
    [Route(f"/{v}/initialSync", get_initial_sync, methods=["GET"]) for v in ("v3", "r0")]
    + [Route(f"/{v}/events", get_events, methods=["GET"]) for v in ("v3", "r0")]
    + [
        Route(f"/{v}/rooms/{{room_id}}/initialSync", get_room_initial_sync, methods=["GET"])
        for v in ("v3", "r0")
    ]
    + [Route(f"/{v}/events/{{event_id}}", get_event, methods=["GET"]) for v in ("v3", "r0")]
)
