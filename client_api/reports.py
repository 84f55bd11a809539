"""Reporting content: rooms (spec v1.13), events, users (v1.14)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import StrictStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.ids import EventID, RoomID, UserID
from homeserver.rooms.reports import ReportService
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class ReportServices:
    """What the routes of reports call (built by the composition root)."""

    reports: ReportService


class ReasonBody(RequestBody):
    reason: StrictStr


class OptionalReasonBody(RequestBody):
    # spec v1.13: an event report's reason may be left out; ``score`` is gone (v1.18).
    reason: StrictStr | None = None


async def report_room(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/report"""
    hs = services_of(request, ReportServices)
    requester = await require_user(request)
    body = await parse_body(request, ReasonBody)
    await hs.reports.report_room(
        requester, RoomID.parse(request.path_params["room_id"]), body.reason
    )
    return json_response({})


async def report_event(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}"""
    hs = services_of(request, ReportServices)
    requester = await require_user(request)
    body = await parse_body(request, OptionalReasonBody, empty_ok=True)
    await hs.reports.report_event(
        requester,
        RoomID.parse(request.path_params["room_id"]),
        EventID.parse(request.path_params["event_id"]),
        body.reason,
    )
    return json_response({})


async def report_user(request: Request) -> Response:
    """POST /_matrix/client/v3/users/{userId}/report"""
    hs = services_of(request, ReportServices)
    requester = await require_user(request)
    body = await parse_body(request, ReasonBody)
    await hs.reports.report_user(
        requester, UserID.parse(request.path_params["user_id"]), body.reason
    )
    return json_response({})


client_routes = [
    Route("/v3/rooms/{room_id}/report", report_room, methods=["POST"]),
    Route("/v3/rooms/{room_id}/report/{event_id}", report_event, methods=["POST"]),
    Route("/v3/users/{user_id}/report", report_user, methods=["POST"]),
]
