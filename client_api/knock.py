"""Knocking on rooms (spec: "Knocking on rooms")."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.rooms.directory import DirectoryService
from homeserver.rooms.membership import MembershipService
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class KnockServices:
    """What the routes of knocking call (built by the composition root)."""

    directory: DirectoryService
    memberships: MembershipService
    ratelimiter: RateLimiter


class KnockBody(RequestBody):
    reason: str | None = None


async def knock_room(request: Request) -> Response:
    """POST /_matrix/client/v3/knock/{roomIdOrAlias}"""
    hs = services_of(request, KnockServices)
    requester = await require_user(request)
    body = await parse_body(request, KnockBody, empty_ok=True)
    room_id, servers = await hs.directory.resolve_room_and_servers(
        request.path_params["room_id_or_alias"]
    )
    await hs.ratelimiter.check(Action.JOIN, requester.user_id)
    # `via` (and `server_name`, its deprecated name): servers to knock through.
    via = [*request.query_params.getlist("via"), *request.query_params.getlist("server_name")]
    await hs.memberships.knock(requester, room_id, body.reason, servers=[*via, *servers])
    return json_response({"room_id": room_id})


client_routes = [
    Route("/v3/knock/{room_id_or_alias}", knock_room, methods=["POST"]),
]
