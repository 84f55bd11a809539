"""Room upgrades (spec: "Room Upgrades")."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.ids import RoomID
from homeserver.rooms.upgrade import RoomUpgrader
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class UpgradeServices:
    """What the routes of room upgrades call (built by the composition root)."""

    room_upgrader: RoomUpgrader


class UpgradeBody(RequestBody):
    new_version: str
    additional_creators: list[str] = Field(default_factory=list, max_length=100)


async def upgrade_room(request: Request) -> Response:
    """POST /_matrix/client/v3/rooms/{roomId}/upgrade"""
    hs = services_of(request, UpgradeServices)
    requester = await require_user(request)
    body = await parse_body(request, UpgradeBody)
    replacement = await hs.room_upgrader.upgrade(
        requester,
        RoomID.parse(request.path_params["room_id"]),
        body.new_version,
        body.additional_creators,
    )
    return json_response({"replacement_room": replacement})


client_routes = [
    Route("/v3/rooms/{room_id}/upgrade", upgrade_room, methods=["POST"]),
]
