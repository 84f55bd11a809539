"""Other servers reading our rooms: events, state, auth chains, backfill, missing events."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from federation.edge import authenticated_origin
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID
from homeserver.core.types import JsonDict
from homeserver.federation.room_reads import MAX_REQUEST_EVENT_IDS, RoomReads
from homeserver.web.edge import RequestBody, json_response, query_int, services_of, validate_body


@dataclass(frozen=True, slots=True)
class RoomReadServices:
    """What the federation room read routes call (built by the composition root)."""

    reads: RoomReads
    server_name: str
    clock: Clock


def _room_id(request: Request) -> RoomID:
    return RoomID.parse(request.path_params["room_id"])


def _event_id(raw: str) -> EventID:
    return EventID.parse(raw)


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if value is None:
        raise MatrixError(Codes.MISSING_PARAM, f"Missing query parameter: {name}")
    return value


def _transaction(hs: RoomReadServices, pdus: list[JsonDict]) -> JsonDict:
    return {"origin": hs.server_name, "origin_server_ts": hs.clock.now_ms(), "pdus": pdus}


async def get_event(request: Request) -> Response:
    """GET /_matrix/federation/v1/event/{eventId}"""
    hs = services_of(request, RoomReadServices)
    origin, _ = await authenticated_origin(request)
    pdu = await hs.reads.get_event(origin, _event_id(request.path_params["event_id"]))
    return json_response(_transaction(hs, [pdu]))


async def get_state(request: Request) -> Response:
    """GET /_matrix/federation/v1/state/{roomId}"""
    hs = services_of(request, RoomReadServices)
    origin, _ = await authenticated_origin(request)
    room_id = _room_id(request)
    event_id = _event_id(_required(request, "event_id"))
    found = await hs.reads.get_state(origin, room_id, event_id)
    return json_response({"pdus": found.state, "auth_chain": found.auth_chain})


async def get_state_ids(request: Request) -> Response:
    """GET /_matrix/federation/v1/state_ids/{roomId}"""
    hs = services_of(request, RoomReadServices)
    origin, _ = await authenticated_origin(request)
    event_id = _event_id(_required(request, "event_id"))
    found = await hs.reads.get_state_ids(origin, _room_id(request), event_id)
    return json_response({"pdu_ids": found.pdu_ids, "auth_chain_ids": found.auth_chain_ids})


async def get_event_auth(request: Request) -> Response:
    """GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}"""
    hs = services_of(request, RoomReadServices)
    origin, _ = await authenticated_origin(request)
    chain = await hs.reads.get_event_auth(
        origin, _room_id(request), _event_id(request.path_params["event_id"])
    )
    return json_response({"auth_chain": chain})


async def get_backfill(request: Request) -> Response:
    """GET /_matrix/federation/v1/backfill/{roomId}"""
    hs = services_of(request, RoomReadServices)
    origin, _ = await authenticated_origin(request)
    room_id = _room_id(request)
    raw_ids = request.query_params.getlist("v")
    if not raw_ids:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: v")
    if len(raw_ids) > MAX_REQUEST_EVENT_IDS:
        raise MatrixError(Codes.INVALID_PARAM, f"At most {MAX_REQUEST_EVENT_IDS} event IDs")
    event_ids = [_event_id(v) for v in raw_ids]
    limit = query_int(request, "limit", None, minimum=0)
    if limit is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: limit")
    events = await hs.reads.backfill(origin, room_id, event_ids, limit)
    return json_response(_transaction(hs, events))


class MissingEventsBody(RequestBody):
    earliest_events: list[str] = Field(max_length=MAX_REQUEST_EVENT_IDS)
    latest_events: list[str] = Field(max_length=MAX_REQUEST_EVENT_IDS)
    limit: int = Field(default=10, ge=0)
    min_depth: int = Field(default=0, ge=0)


async def post_get_missing_events(request: Request) -> Response:
    """POST /_matrix/federation/v1/get_missing_events/{roomId}"""
    hs = services_of(request, RoomReadServices)
    origin, content = await authenticated_origin(request)
    room_id = _room_id(request)
    if not isinstance(content, dict):
        raise MatrixError(Codes.BAD_JSON, "The body must be a JSON object")
    body = validate_body(content, MissingEventsBody)
    events = await hs.reads.get_missing_events(
        origin,
        room_id,
        [_event_id(e) for e in body.earliest_events],
        [_event_id(e) for e in body.latest_events],
        body.limit,
        body.min_depth,
    )
    return json_response({"events": events})


routes = [
    Route("/v1/event/{event_id}", get_event, methods=["GET"]),
    Route("/v1/state/{room_id}", get_state, methods=["GET"]),
    Route("/v1/state_ids/{room_id}", get_state_ids, methods=["GET"]),
    Route("/v1/event_auth/{room_id}/{event_id}", get_event_auth, methods=["GET"]),
    Route("/v1/backfill/{room_id}", get_backfill, methods=["GET"]),
    Route("/v1/get_missing_events/{room_id}", post_get_missing_events, methods=["POST"]),
]
