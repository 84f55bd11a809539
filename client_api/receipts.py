"""Receipts and read markers (spec: receipts, read and unread markers)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.ids import EventID, RoomID
from homeserver.ephemeral.receipts import ReceiptService
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class ReceiptServices:
    """What the routes of receipts and read markers call (built by the composition root)."""

    receipts: ReceiptService


class ReceiptBody(RequestBody):
    thread_id: str | None = None  # absent: an unthreaded receipt


class ReadMarkersBody(RequestBody):
    fully_read: str | None = Field(default=None, alias="m.fully_read")
    read: str | None = Field(default=None, alias="m.read")
    read_private: str | None = Field(default=None, alias="m.read.private")


async def post_receipt(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}"""
    hs = services_of(request, ReceiptServices)
    requester = await require_user(request)
    room_id = RoomID.parse(request.path_params["room_id"])
    event_id = EventID.parse(request.path_params["event_id"])
    # Clients have long sent no body at all; the spec's body only adds thread_id.
    body = await parse_body(request, ReceiptBody, empty_ok=True)
    await hs.receipts.post_receipt(
        requester, room_id, request.path_params["receipt_type"], event_id, body.thread_id
    )
    return json_response({})


async def post_read_markers(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/read_markers"""
    hs = services_of(request, ReceiptServices)
    requester = await require_user(request)
    room_id = RoomID.parse(request.path_params["room_id"])
    body = await parse_body(request, ReadMarkersBody)
    await hs.receipts.set_read_markers(
        requester,
        room_id,
        _event_id(body.fully_read),
        _event_id(body.read),
        _event_id(body.read_private),
    )
    return json_response({})


def _event_id(value: str | None) -> EventID | None:
    return EventID.parse(value) if value is not None else None


client_routes = [
    Route("/v3/rooms/{room_id}/receipt/{receipt_type}/{event_id}", post_receipt, methods=["POST"]),
    Route("/v3/rooms/{room_id}/read_markers", post_read_markers, methods=["POST"]),
]
