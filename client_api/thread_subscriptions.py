"""Thread subscriptions (MSC4306) under /unstable/io.element.msc4306/, and the pagination of
their changes (MSC4308) under /unstable/io.element.msc4308/thread_subscriptions."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import StrictStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID
from homeserver.core.streams import Stream
from homeserver.rooms.thread_subscriptions import ThreadSubscriptionService, parse_token, token
from homeserver.sync.sliding.state import Position
from homeserver.web.edge import (
    RequestBody,
    json_response,
    parse_body,
    query_int,
    require_user,
    services_of,
)

_SUBSCRIPTION = "/unstable/io.element.msc4306/rooms/{room_id}/thread/{thread_root_id}/subscription"
PAGE_DEFAULT = 100
PAGE_MAX = 512


@dataclass(frozen=True, slots=True)
class ThreadSubscriptionServices:
    """What the routes of thread subscriptions call (built by the composition root)."""

    thread_subscriptions: ThreadSubscriptionService


class SubscribeBody(RequestBody):
    automatic: StrictStr | None = None


def _ids(request: Request) -> tuple[RoomID, EventID]:
    return (
        RoomID.parse(request.path_params["room_id"]),
        EventID.parse(request.path_params["thread_root_id"]),
    )


async def get_subscription(request: Request) -> Response:
    """GET /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/
    subscription"""
    hs = services_of(request, ThreadSubscriptionServices)
    room_id, root_id = _ids(request)
    requester = await require_user(request)
    return json_response(await hs.thread_subscriptions.get(requester, room_id, root_id))


async def put_subscription(request: Request) -> Response:
    """PUT /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/
    subscription"""
    hs = services_of(request, ThreadSubscriptionServices)
    room_id, root_id = _ids(request)
    requester = await require_user(request)
    body = await parse_body(request, SubscribeBody, empty_ok=True)
    automatic = EventID.parse(body.automatic) if body.automatic is not None else None
    await hs.thread_subscriptions.subscribe(requester, room_id, root_id, automatic)
    return json_response({})


async def delete_subscription(request: Request) -> Response:
    """DELETE /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/
    subscription"""
    hs = services_of(request, ThreadSubscriptionServices)
    room_id, root_id = _ids(request)
    requester = await require_user(request)
    await hs.thread_subscriptions.unsubscribe(requester, room_id, root_id)
    return json_response({})


async def paginate(request: Request) -> Response:
    """GET /_matrix/client/unstable/io.element.msc4308/thread_subscriptions?dir=b"""
    hs = services_of(request, ThreadSubscriptionServices)
    requester = await require_user(request)
    q = request.query_params
    if q.get("dir") != "b":
        raise MatrixError(Codes.INVALID_PARAM, "dir must be 'b'")
    # query_int caps at the maximum; the minimum rules out None.
    limit = query_int(request, "limit", PAGE_DEFAULT, minimum=1, maximum=PAGE_MAX) or PAGE_DEFAULT
    raw_from, raw_to = q.get("from"), q.get("to")
    if raw_from is not None:
        upto = parse_token(raw_from)
        if upto is None:
            raise MatrixError(Codes.INVALID_PARAM, "from is not a thread subscriptions token")
    else:
        upto = None
    after = 0
    if raw_to is not None:
        found = parse_token(raw_to)
        if found is None:
            # MSC4308: `to` may also be a sliding sync `pos`.
            try:
                found = Position.parse(raw_to).token.get(Stream.THREAD_SUBSCRIPTIONS)
            except MatrixError:
                raise MatrixError(
                    Codes.INVALID_PARAM, "to is not a thread subscriptions token or a pos"
                ) from None
        after = found
    body, more = await hs.thread_subscriptions.changes(
        requester.user_id, after=after, upto=upto, limit=limit
    )
    if more is not None:
        body["end"] = token(more)
    return json_response(body)


client_routes = [
    Route(_SUBSCRIPTION, get_subscription, methods=["GET"]),
    Route(_SUBSCRIPTION, put_subscription, methods=["PUT"]),
    Route(_SUBSCRIPTION, delete_subscription, methods=["DELETE"]),
    Route("/unstable/io.element.msc4308/thread_subscriptions", paginate, methods=["GET"]),
]
