"""Long-poll sync (spec: GET /sync)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver import jsonutil
from homeserver.errors import Codes, MatrixError
from homeserver.filtering import SyncFilter
from homeserver.ids import UserID
from homeserver.streams import StreamToken
from homeserver.sync.service import SyncRequest
from homeserver.web import homeserver_of, json_response, query_bool, query_int, require_user


async def sync(request: Request) -> Response:
    """GET /_matrix/client/v3/sync"""
    hs = homeserver_of(request)
    requester = await require_user(request)
    q = request.query_params
    since = StreamToken.parse(q["since"]) if q.get("since") else None
    timeout = query_int(
        request, "timeout", 0, minimum=0, maximum=hs.config.limits.sync_timeout_max_ms
    )
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
    return json_response(response)


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
        try:
            data = jsonutil.loads(raw)
        except ValueError:
            raise MatrixError(Codes.BAD_JSON, "filter is not valid JSON") from None
        return SyncFilter.from_json(data)
    hs = homeserver_of(request)
    return SyncFilter.from_json(await hs.filters.get_filter(UserID(user_id), raw))


client_routes = [Route("/v3/sync", sync, methods=["GET"])]
