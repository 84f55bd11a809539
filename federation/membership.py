"""Other servers' users joining, leaving and knocking on our rooms; other servers inviting
our users into theirs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from federation.edge import authenticated_origin
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID, UserID
from homeserver.core.types import JsonDict
from homeserver.federation.membership import MAX_INVITE_STATE, FederatedMembership
from homeserver.web.edge import RequestBody, json_response, services_of, validate_body


@dataclass(frozen=True, slots=True)
class MembershipServices:
    """What the federation membership routes call (built by the composition root)."""

    memberships: FederatedMembership
    server_name: str


def _object(content: Any) -> JsonDict:
    if not isinstance(content, dict):
        raise MatrixError(Codes.BAD_JSON, "The body must be a JSON object")
    return content


def _path_ids(request: Request) -> tuple[RoomID, EventID]:
    return (
        RoomID.parse(request.path_params["room_id"]),
        EventID.parse(request.path_params["event_id"]),
    )


async def _make(request: Request, membership: str, versions: list[str] | None) -> Response:
    hs = services_of(request, MembershipServices)
    origin, _ = await authenticated_origin(request)
    room_id = RoomID.parse(request.path_params["room_id"])
    user_id = UserID.parse(request.path_params["user_id"])
    template, version = await hs.memberships.make_membership(
        origin, room_id, user_id, membership, versions
    )
    return json_response({"event": template, "room_version": version})


def _versions(request: Request) -> list[str]:
    # spec: without `ver`, the requesting server supports room version 1 only.
    return request.query_params.getlist("ver") or ["1"]


async def make_join(request: Request) -> Response:
    """GET /_matrix/federation/v1/make_join/{roomId}/{userId}"""
    return await _make(request, "join", _versions(request))


async def make_leave(request: Request) -> Response:
    """GET /_matrix/federation/v1/make_leave/{roomId}/{userId}"""
    return await _make(request, "leave", None)


async def make_knock(request: Request) -> Response:
    """GET /_matrix/federation/v1/make_knock/{roomId}/{userId}"""
    versions = request.query_params.getlist("ver")
    if not versions:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: ver")
    return await _make(request, "knock", versions)


async def _send_join(request: Request) -> JsonDict:
    hs = services_of(request, MembershipServices)
    origin, content = await authenticated_origin(request)
    room_id, event_id = _path_ids(request)
    answer = await hs.memberships.send_join(origin, room_id, event_id, _object(content))
    return {
        "origin": hs.server_name,
        "state": answer.state,
        "auth_chain": answer.auth_chain,
        "event": answer.event,
        "servers_in_room": answer.servers_in_room,
    }


async def send_join(request: Request) -> Response:
    """PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}"""
    # ``omit_members`` (MSC3706, faster joins) may be asked: the full state is always
    # answered, which the spec allows (members_omitted false).
    return json_response({**await _send_join(request), "members_omitted": False})


async def send_join_v1(request: Request) -> Response:
    """PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}

    Deprecated (v2 replaced it), still served as Synapse does for older servers: the same
    answer as v2, inside ``[200, {...}]``."""
    return json_response([200, await _send_join(request)])


async def _send_leave(request: Request) -> None:
    hs = services_of(request, MembershipServices)
    origin, content = await authenticated_origin(request)
    room_id, event_id = _path_ids(request)
    await hs.memberships.send_leave(origin, room_id, event_id, _object(content))


async def send_leave(request: Request) -> Response:
    """PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}"""
    await _send_leave(request)
    return json_response({})


async def send_leave_v1(request: Request) -> Response:
    """PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId} (deprecated: ``[200, {}]``)"""
    await _send_leave(request)
    return json_response([200, {}])


async def send_knock(request: Request) -> Response:
    """PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}"""
    hs = services_of(request, MembershipServices)
    origin, content = await authenticated_origin(request)
    room_id, event_id = _path_ids(request)
    state = await hs.memberships.send_knock(origin, room_id, event_id, _object(content))
    return json_response({"knock_room_state": state})


class InviteBody(RequestBody):
    room_version: str = Field(max_length=64)
    event: dict[str, Any]
    invite_room_state: list[dict[str, Any]] = Field(
        default_factory=list, max_length=MAX_INVITE_STATE
    )


async def invite(request: Request) -> Response:
    """PUT /_matrix/federation/v2/invite/{roomId}/{eventId}"""
    hs = services_of(request, MembershipServices)
    origin, content = await authenticated_origin(request)
    room_id, event_id = _path_ids(request)
    body = validate_body(_object(content), InviteBody)
    signed = await hs.memberships.on_invite(
        origin,
        room_id,
        event_id,
        body.room_version,
        dict(body.event),
        [dict(e) for e in body.invite_room_state],
    )
    return json_response({"event": signed})


class InviteV1Unsigned(RequestBody):
    invite_room_state: list[dict[str, Any]] = Field(
        default_factory=list, max_length=MAX_INVITE_STATE
    )


class InviteV1Body(RequestBody):
    """The v1 body is the invite itself; only ``unsigned`` is read here, the rest is the
    event's and checked as one."""

    unsigned: InviteV1Unsigned = Field(default_factory=InviteV1Unsigned)


def _v1_room_version(invite_room_state: list[dict[str, Any]]) -> str:
    """spec: a v1 invite is for a room of version 1 or 2; the create event among the
    stripped state tells which, and version 1 is assumed otherwise."""
    for event in invite_room_state:
        content = event.get("content")
        if event.get("type") == "m.room.create" and isinstance(content, dict):
            if content.get("room_version") == "2":
                return "2"
    return "1"


async def invite_v1(request: Request) -> Response:
    """PUT /_matrix/federation/v1/invite/{roomId}/{eventId}"""
    hs = services_of(request, MembershipServices)
    origin, content = await authenticated_origin(request)
    room_id, event_id = _path_ids(request)
    event = _object(content)
    body = validate_body(event, InviteV1Body)
    state = [dict(e) for e in body.unsigned.invite_room_state]
    signed = await hs.memberships.on_invite(
        origin, room_id, event_id, _v1_room_version(state), dict(event), state
    )
    return json_response([200, {"event": signed}])


routes = [
    Route("/v1/make_join/{room_id}/{user_id}", make_join, methods=["GET"]),
    Route("/v2/send_join/{room_id}/{event_id}", send_join, methods=["PUT"]),
    Route("/v1/make_leave/{room_id}/{user_id}", make_leave, methods=["GET"]),
    Route("/v2/send_leave/{room_id}/{event_id}", send_leave, methods=["PUT"]),
    Route("/v1/make_knock/{room_id}/{user_id}", make_knock, methods=["GET"]),
    Route("/v1/send_knock/{room_id}/{event_id}", send_knock, methods=["PUT"]),
    Route("/v2/invite/{room_id}/{event_id}", invite, methods=["PUT"]),
    # Deprecated v1 forms, for servers that predate v2.
    Route("/v1/send_join/{room_id}/{event_id}", send_join_v1, methods=["PUT"]),
    Route("/v1/send_leave/{room_id}/{event_id}", send_leave_v1, methods=["PUT"]),
    Route("/v1/invite/{room_id}/{event_id}", invite_v1, methods=["PUT"]),
]
