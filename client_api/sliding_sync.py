"""Simplified sliding sync (MSC4186): POST .../org.matrix.simplified_msc3575/sync."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.ephemeral.presence import PresenceService
from homeserver.sync.sliding.body import UNSTABLE_FEATURE, parse_request
from homeserver.sync.sliding.service import SlidingSyncService
from homeserver.sync.sliding.state import Position
from homeserver.web.edge import (
    items_response,
    query_int,
    read_json_object,
    require_user,
    services_of,
)


@dataclass(frozen=True, slots=True)
class SlidingSyncServices:
    """What the route of sliding sync calls (built by the composition root)."""

    sliding_sync: SlidingSyncService
    presence: PresenceService
    sync_timeout_max_ms: int


async def sliding_sync(request: Request) -> Response:
    """POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync"""
    hs = services_of(request, SlidingSyncServices)
    requester = await require_user(request)
    raw_pos = request.query_params.get("pos")
    pos = Position.parse(raw_pos) if raw_pos else None
    timeout = query_int(request, "timeout", 0, minimum=0, maximum=hs.sync_timeout_max_ms)
    body = parse_request(await read_json_object(request, empty_ok=True))
    async with hs.presence.syncing(requester, "online"):  # online while the request is open
        response = await hs.sliding_sync.sync(requester, body, pos, timeout or 0)
    # As /sync: an event or entry that cannot be rendered is left out, not the response.
    return items_response(response, "sliding sync")


client_routes = [
    Route(f"/unstable/{UNSTABLE_FEATURE}/sync", sliding_sync, methods=["POST"]),
]
