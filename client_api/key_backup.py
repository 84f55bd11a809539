"""Server-side key backups (spec: "Server-side key backups", /room_keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.jsonutil import MAX_SAFE_INT
from homeserver.e2ee.key_backup import KeyBackupService, KeyData
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class KeyBackupServices:
    """What the routes of server-side key backup call (built by the composition root)."""

    key_backup: KeyBackupService


class CreateVersionBody(RequestBody):
    algorithm: str
    auth_data: dict[str, Any]


class UpdateVersionBody(RequestBody):
    algorithm: str
    auth_data: dict[str, Any]
    version: str | None = None


class KeyBackupDataBody(RequestBody):
    first_message_index: int = Field(ge=0, le=MAX_SAFE_INT)
    forwarded_count: int = Field(ge=0, le=MAX_SAFE_INT)
    is_verified: bool
    session_data: dict[str, Any]

    def data(self) -> KeyData:
        return KeyData(
            self.first_message_index, self.forwarded_count, self.is_verified, self.session_data
        )


class RoomKeyBackupBody(RequestBody):
    sessions: dict[str, KeyBackupDataBody]


class RoomKeysBody(RequestBody):
    rooms: dict[str, RoomKeyBackupBody]


def _version_param(request: Request) -> str:
    version = request.query_params.get("version")
    if version is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: version")
    return version


async def post_version(request: Request) -> Response:
    """POST /_matrix/client/v3/room_keys/version"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    body = await parse_body(request, CreateVersionBody)
    version = await hs.key_backup.create_version(requester, body.algorithm, body.auth_data)
    return json_response({"version": version})


async def get_latest_version(request: Request) -> Response:
    """GET /_matrix/client/v3/room_keys/version"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    return json_response(await hs.key_backup.get_version(requester, None))


async def get_version(request: Request) -> Response:
    """GET /_matrix/client/v3/room_keys/version/{version}"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    return json_response(await hs.key_backup.get_version(requester, request.path_params["version"]))


async def put_version(request: Request) -> Response:
    """PUT /_matrix/client/v3/room_keys/version/{version}"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    body = await parse_body(request, UpdateVersionBody)
    await hs.key_backup.update_version(
        requester, request.path_params["version"], body.algorithm, body.auth_data, body.version
    )
    return json_response({})


async def delete_version(request: Request) -> Response:
    """DELETE /_matrix/client/v3/room_keys/version/{version}"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    await hs.key_backup.delete_version(requester, request.path_params["version"])
    return json_response({})


async def put_keys(request: Request) -> Response:
    """PUT /_matrix/client/v3/room_keys/keys"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    version = _version_param(request)
    body = await parse_body(request, RoomKeysBody)
    rooms = {
        room_id: {s: d.data() for s, d in room.sessions.items()}
        for room_id, room in body.rooms.items()
    }
    return json_response(await hs.key_backup.put_keys(requester, version, rooms))


async def put_room_keys(request: Request) -> Response:
    """PUT /_matrix/client/v3/room_keys/keys/{roomId}"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    version = _version_param(request)
    body = await parse_body(request, RoomKeyBackupBody)
    rooms = {request.path_params["room_id"]: {s: d.data() for s, d in body.sessions.items()}}
    return json_response(await hs.key_backup.put_keys(requester, version, rooms))


async def put_session_key(request: Request) -> Response:
    """PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    version = _version_param(request)
    body = await parse_body(request, KeyBackupDataBody)
    p = request.path_params
    rooms = {p["room_id"]: {p["session_id"]: body.data()}}
    return json_response(await hs.key_backup.put_keys(requester, version, rooms))


async def get_keys(request: Request) -> Response:
    """GET /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    p = request.path_params
    return json_response(
        await hs.key_backup.get_keys(
            requester, _version_param(request), p.get("room_id"), p.get("session_id")
        )
    )


async def delete_keys(request: Request) -> Response:
    """DELETE /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]"""
    hs = services_of(request, KeyBackupServices)
    requester = await require_user(request)
    p = request.path_params
    return json_response(
        await hs.key_backup.delete_keys(
            requester, _version_param(request), p.get("room_id"), p.get("session_id")
        )
    )


client_routes = [
    Route("/v3/room_keys/version", post_version, methods=["POST"]),
    Route("/v3/room_keys/version", get_latest_version, methods=["GET"]),
    Route("/v3/room_keys/version/{version}", get_version, methods=["GET"]),
    Route("/v3/room_keys/version/{version}", put_version, methods=["PUT"]),
    Route("/v3/room_keys/version/{version}", delete_version, methods=["DELETE"]),
    Route("/v3/room_keys/keys", put_keys, methods=["PUT"]),
    Route("/v3/room_keys/keys", get_keys, methods=["GET"]),
    Route("/v3/room_keys/keys", delete_keys, methods=["DELETE"]),
    Route("/v3/room_keys/keys/{room_id}", put_room_keys, methods=["PUT"]),
    Route("/v3/room_keys/keys/{room_id}", get_keys, methods=["GET"]),
    Route("/v3/room_keys/keys/{room_id}", delete_keys, methods=["DELETE"]),
    # Megolm session IDs are standard base64, which has `/` (sent as %2F): the last segment
    # is a path.
    Route("/v3/room_keys/keys/{room_id}/{session_id:path}", put_session_key, methods=["PUT"]),
    Route("/v3/room_keys/keys/{room_id}/{session_id:path}", get_keys, methods=["GET"]),
    Route("/v3/room_keys/keys/{room_id}/{session_id:path}", delete_keys, methods=["DELETE"]),
]
