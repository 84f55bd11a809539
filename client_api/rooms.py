"""Rooms: create, membership, send, state, redact, read (spec: rooms, membership, state)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from client_api.delayed_events import delay_of
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID, UserID
from homeserver.core.json_limits import query_json
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.filters.matching import EventFilter
from homeserver.rooms.create import CreateRoomRequest, RoomCreator
from homeserver.rooms.delayed import DelayedEventService
from homeserver.rooms.directory import DirectoryService
from homeserver.rooms.membership import MembershipService
from homeserver.rooms.send import SendService
from homeserver.rooms.service import RoomService
from homeserver.web.edge import (
    RequestBody,
    item_response,
    items_response,
    json_response,
    parse_body,
    query_int,
    read_json_object,
    require_user,
    services_of,
    validate_body,
)


@dataclass(frozen=True, slots=True)
class RoomServices:
    """What the routes of rooms call (built by the composition root)."""

    rooms: RoomService
    room_creator: RoomCreator
    memberships: MembershipService
    directory: DirectoryService
    sending: SendService
    ratelimiter: RateLimiter
    delayed_events: DelayedEventService


class CreateRoomBody(RequestBody):
    visibility: Literal["public", "private"] = "private"
    room_alias_name: str | None = None
    name: str | None = None
    topic: str | None = None
    invite: list[str] = Field(default_factory=list, max_length=100)
    invite_3pid: list[dict[str, Any]] = Field(default_factory=list)
    room_version: str | None = None
    creation_content: dict[str, Any] = Field(default_factory=dict)
    initial_state: list[dict[str, Any]] = Field(default_factory=list)
    preset: Literal["private_chat", "public_chat", "trusted_private_chat"] | None = None
    is_direct: bool = False
    power_level_content_override: dict[str, Any] | None = None


class ReasonBody(RequestBody):
    reason: str | None = None


class TargetBody(RequestBody):
    user_id: str
    reason: str | None = None


async def create_room(request: Request) -> Response:
    """POST /_matrix/client/v3/createRoom"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    raw = await read_json_object(request)
    check_json_numbers(raw)
    body = validate_body(raw, CreateRoomBody)
    if body.invite_3pid:
        raise MatrixError(
            Codes.UNKNOWN,
            "Third-party invites need an identity server, which this server does not use",
            status=400,
        )
    room_id = await hs.room_creator.create_room(
        requester,
        CreateRoomRequest(
            visibility=body.visibility,
            room_alias_name=body.room_alias_name,
            name=body.name,
            topic=body.topic,
            invite=tuple(body.invite),
            room_version=body.room_version,
            creation_content=body.creation_content,
            initial_state=tuple(body.initial_state),
            preset=body.preset,
            is_direct=body.is_direct,
            power_level_content_override=body.power_level_content_override,
        ),
    )
    return json_response({"room_id": room_id})


def _room_id(request: Request) -> RoomID:
    return RoomID.parse(request.path_params["room_id"])


async def join_room_by_id(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/join"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    raw = await read_json_object(request, empty_ok=True)
    body = validate_body(raw, ReasonBody)
    room_id = _room_id(request)
    await hs.ratelimiter.check(Action.JOIN, requester.user_id)
    await hs.memberships.join(requester, room_id, body.reason, extra=_join_extra(raw))
    return json_response({"room_id": room_id})


def _join_extra(raw: dict[str, Any]) -> dict[str, Any]:
    """The keys of a /join body beside the spec's: more content for the member event (as
    Synapse keeps them; SyTest checks it)."""
    check_json_numbers(raw)
    return {k: v for k, v in raw.items() if k not in ("third_party_signed",)}


async def join_room(request: Request) -> Response:
    """POST /_matrix/client/v3/join/{roomIdOrAlias}"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    raw = await read_json_object(request, empty_ok=True)
    body = validate_body(raw, ReasonBody)
    room_id, servers = await hs.directory.resolve_room_and_servers(
        request.path_params["room_id_or_alias"]
    )
    await hs.ratelimiter.check(Action.JOIN, requester.user_id)
    # spec: `via` (v1.12), and `server_name`, its deprecated name: servers to join through.
    via = [*request.query_params.getlist("via"), *request.query_params.getlist("server_name")]
    await hs.memberships.join(
        requester, room_id, body.reason, servers=[*via, *servers], extra=_join_extra(raw)
    )
    return json_response({"room_id": room_id})


async def leave_room(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/leave"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    body = await parse_body(request, ReasonBody, empty_ok=True)
    await hs.memberships.leave(requester, _room_id(request), body.reason)
    return json_response({})


async def forget_room(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/forget"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    await read_json_object(request, empty_ok=True)
    await hs.memberships.forget(requester, _room_id(request))
    return json_response({})


async def invite_user(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/invite"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    body = await parse_body(request, TargetBody)
    await hs.memberships.invite(
        requester, _room_id(request), UserID.parse(body.user_id), reason=body.reason
    )
    return json_response({})


async def kick_user(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/kick"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    body = await parse_body(request, TargetBody)
    await hs.memberships.set_membership_of(
        requester, _room_id(request), UserID.parse(body.user_id), "leave", body.reason
    )
    return json_response({})


async def ban_user(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/ban"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    body = await parse_body(request, TargetBody)
    await hs.memberships.set_membership_of(
        requester, _room_id(request), UserID.parse(body.user_id), "ban", body.reason
    )
    return json_response({})


async def unban_user(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/unban"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    body = await parse_body(request, TargetBody)
    await hs.memberships.unban(
        requester, _room_id(request), UserID.parse(body.user_id), body.reason
    )
    return json_response({})


async def joined_rooms(request: Request) -> Response:
    """GET /_matrix/client/v3/joined_rooms"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    return json_response({"joined_rooms": await hs.memberships.joined_rooms(requester)})


async def send_event(request: Request) -> Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    content = await read_json_object(request)
    room_id = _room_id(request)
    event_type = request.path_params["event_type"]
    delay = delay_of(request)
    if delay is not None:  # MSC4140: sent later, by the same path
        delay_id = await hs.delayed_events.schedule(
            requester, room_id, event_type, None, content, delay
        )
        return json_response({"delay_id": delay_id})
    event_id = await hs.sending.send_event(
        requester, room_id, event_type, request.path_params["txn_id"], content
    )
    return json_response({"event_id": event_id})


async def post_event(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/send/{eventType}: the form without a
    transaction ID, from before the spec had one (Synapse still serves it; SyTest uses it).
    Each request is a new event: nothing makes a retry idempotent."""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    content = await read_json_object(request)
    event_id = await hs.sending.send_event(
        requester,
        _room_id(request),
        request.path_params["event_type"],
        f"post-{secrets.token_urlsafe(18)}",
        content,
    )
    return json_response({"event_id": event_id})


async def put_state(request: Request) -> Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    content = await read_json_object(request)
    room_id = _room_id(request)
    event_type = request.path_params["event_type"]
    state_key = request.path_params.get("state_key", "")
    delay = delay_of(request)
    if delay is not None:  # MSC4140
        delay_id = await hs.delayed_events.schedule(
            requester, room_id, event_type, state_key, content, delay
        )
        return json_response({"delay_id": delay_id})
    if event_type == "m.room.member":
        # One's own join (with a per-room display name) or leave, as Synapse takes it.
        check_json_numbers(content, "content")
        event_id = await hs.memberships.put_member_state(requester, room_id, state_key, content)
    else:
        event_id = await hs.rooms.set_state(requester, room_id, event_type, state_key, content)
    return json_response({"event_id": event_id})


async def get_state_event(request: Request) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    room_id = _room_id(request)
    event_type = request.path_params["event_type"]
    state_key = request.path_params.get("state_key", "")
    if request.query_params.get("format") == "event":
        event = await hs.rooms.get_state_event(requester, room_id, event_type, state_key)
        serialized = await hs.rooms.serialize(
            requester, [event], await hs.rooms.room_version(room_id)
        )
        return items_response(serialized[0], "state event")
    return item_response(
        await hs.rooms.state_content(requester, room_id, event_type, state_key), "state content"
    )


async def get_state(request: Request) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/state"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    return items_response(await hs.rooms.get_state(requester, _room_id(request)), "state")


async def redact_event(request: Request) -> Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    body = await parse_body(request, ReasonBody, empty_ok=True)
    event_id = await hs.sending.redact(
        requester,
        _room_id(request),
        EventID(request.path_params["event_id"]),  # an unknown one is a 404, as any other
        request.path_params["txn_id"],
        body.reason,
    )
    return json_response({"event_id": event_id})


async def get_event(request: Request) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    return items_response(
        await hs.rooms.get_event(
            requester, _room_id(request), EventID.parse(request.path_params["event_id"])
        ),
        "event",
    )


def _filter_param(request: Request) -> EventFilter:
    raw = request.query_params.get("filter")
    if raw is None:
        return EventFilter()
    data = query_json(raw, "filter")
    if not isinstance(data, dict):
        raise MatrixError(Codes.BAD_JSON, "filter must be a JSON object")
    return EventFilter.from_json(data)


async def get_messages(request: Request) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/messages"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    direction = request.query_params.get("dir", "b")
    if direction not in ("b", "f"):
        raise MatrixError(Codes.INVALID_PARAM, "dir must be 'b' or 'f'")
    page = await hs.rooms.messages(
        requester,
        _room_id(request),
        from_token=request.query_params.get("from"),
        to_token=request.query_params.get("to"),
        backwards=direction == "b",
        limit=query_int(request, "limit", None, minimum=0),
        event_filter=_filter_param(request),
    )
    body: dict[str, Any] = {"chunk": page.chunk, "start": page.start}
    if page.end is not None:
        body["end"] = page.end
    if page.state:
        body["state"] = page.state
    return items_response(body, "messages")


async def get_context(request: Request) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    limit = query_int(request, "limit", 10, minimum=0, maximum=100)
    assert limit is not None
    return items_response(
        await hs.rooms.context(
            requester,
            _room_id(request),
            EventID.parse(request.path_params["event_id"]),
            limit,
            _filter_param(request),
        ),
        "context",
    )


async def get_members(request: Request) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/members"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    q = request.query_params
    memberships = ("join", "invite", "knock", "leave", "ban")
    for name in ("membership", "not_membership"):
        if q.get(name) is not None and q[name] not in memberships:
            raise MatrixError(Codes.INVALID_PARAM, f"{name} must be one of {memberships}")
    chunk = await hs.rooms.members(
        requester,
        _room_id(request),
        at=q.get("at"),
        membership=q.get("membership"),
        not_membership=q.get("not_membership"),
    )
    return items_response({"chunk": chunk}, "members")


async def get_joined_members(request: Request) -> Response:
    """GET /_matrix/client/v3/rooms/{roomId}/joined_members"""
    hs = services_of(request, RoomServices)
    requester = await require_user(request)
    return json_response({"joined": await hs.rooms.joined_members(requester, _room_id(request))})


_R = "/v3/rooms/{room_id}"
client_routes = [
    Route("/v3/createRoom", create_room, methods=["POST"]),
    Route("/v3/join/{room_id_or_alias}", join_room, methods=["POST"]),
    Route("/v3/joined_rooms", joined_rooms, methods=["GET"]),
    Route(f"{_R}/join", join_room_by_id, methods=["POST"]),
    Route(f"{_R}/leave", leave_room, methods=["POST"]),
    Route(f"{_R}/forget", forget_room, methods=["POST"]),
    Route(f"{_R}/invite", invite_user, methods=["POST"]),
    Route(f"{_R}/kick", kick_user, methods=["POST"]),
    Route(f"{_R}/ban", ban_user, methods=["POST"]),
    Route(f"{_R}/unban", unban_user, methods=["POST"]),
    Route(f"{_R}/send/{{event_type}}/{{txn_id}}", send_event, methods=["PUT"]),
    Route(f"{_R}/send/{{event_type}}", post_event, methods=["POST"]),
    Route(f"{_R}/state", get_state, methods=["GET"]),
    Route(f"{_R}/state/{{event_type}}", put_state, methods=["PUT"]),
    Route(f"{_R}/state/{{event_type}}", get_state_event, methods=["GET"]),
    Route(f"{_R}/state/{{event_type}}/{{state_key:path}}", put_state, methods=["PUT"]),
    Route(f"{_R}/state/{{event_type}}/{{state_key:path}}", get_state_event, methods=["GET"]),
    Route(f"{_R}/redact/{{event_id}}/{{txn_id}}", redact_event, methods=["PUT"]),
    Route(f"{_R}/event/{{event_id}}", get_event, methods=["GET"]),
    Route(f"{_R}/context/{{event_id}}", get_context, methods=["GET"]),
    Route(f"{_R}/messages", get_messages, methods=["GET"]),
    Route(f"{_R}/members", get_members, methods=["GET"]),
    Route(f"{_R}/joined_members", get_joined_members, methods=["GET"]),
]
