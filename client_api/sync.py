"""Long-poll sync (spec: GET /sync)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.json_limits import query_json
from homeserver.core.streams import StreamToken
from homeserver.ephemeral.presence import PresenceService
from homeserver.filters.matching import SyncFilter
from homeserver.filters.service import FilterService
from homeserver.sync.service import SyncRequest, SyncService
from homeserver.web.edge import items_response, query_bool, query_int, require_user, services_of


@dataclass(frozen=True, slots=True)
class SyncServices:
    """What the routes of /sync call (built by the composition root)."""

    sync: SyncService
    filters: FilterService
    presence: PresenceService
    sync_timeout_max_ms: int


async def sync(request: Request) -> Response:
    """GET /_matrix/client/v3/sync"""
    hs = services_of(request, SyncServices)
    requester = await require_user(request)
    q = request.query_params
    since = StreamToken.parse(q["since"]) if q.get("since") else None
    timeout = query_int(request, "timeout", 0, minimum=0, maximum=hs.sync_timeout_max_ms)
    presence = q.get("set_presence", "online")
    if presence not in ("online", "offline", "unavailable"):
        raise MatrixError(
            Codes.INVALID_PARAM, "set_presence must be online, offline or unavailable"
        )
    sync_filter = await _sync_filter(request, requester.user_id)
    async with hs.presence.syncing(requester, presence):  # online while the request is open
        response = await hs.sync.sync(
            requester,
            SyncRequest(
                since=since,
                timeout_ms=timeout or 0,
                full_state=query_bool(request, "full_state"),
                filter=sync_filter,
                state_after=_state_after_key(request),
            ),
        )
    return items_response(response, "sync")


def _state_after_key(request: Request) -> str | None:
    """MSC4222: where the state up to the end of the timeline goes, if it was asked for
    (spec v1.16 ``use_state_after``, or its unstable name, answered under its own)."""
    if query_bool(request, "use_state_after"):
        return "state_after"
    if query_bool(request, "org.matrix.msc4222.use_state_after"):
        return "org.matrix.msc4222.state_after"
    return None


async def _sync_filter(request: Request, user_id: str) -> SyncFilter:
    raw = request.query_params.get("filter")
    if raw is None:
        return SyncFilter()
    if raw.startswith("{"):
        return SyncFilter.from_json(query_json(raw, "filter"))
    hs = services_of(request, SyncServices)
    return SyncFilter.from_json(await hs.filters.get_filter(UserID(user_id), raw))


client_routes = [Route("/v3/sync", sync, methods=["GET"])]
