"""The admin API on the server as a whole: Synapse's ``/v1/event_reports``,
``/v1/registration_tokens``, ``/v1/send_server_notice`` and ``/v1/server_version`` paths and
shapes (and ``/v1/room_reports``, ``/v1/user_reports`` of our own, in the same shape)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.admin.server import AdminServer
from homeserver.admin.users import AdminUsers
from homeserver.core.errors import Codes, MatrixError
from homeserver.storage.admin_server import ReportQuery
from homeserver.web.edge import (
    RequestBody,
    json_response,
    parse_body,
    query_bool,
    query_int,
    read_json_object,
    require_user,
    services_of,
    validate_body,
)

Endpoint = Callable[[Request], Awaitable[Response]]
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TEXT_CHARS = 1000
MAX_TIMESTAMP = 2**53


@dataclass(frozen=True, slots=True)
class AdminServerServices:
    server: AdminServer
    users: AdminUsers


def _server(request: Request) -> AdminServer:
    return services_of(request, AdminServerServices).server


async def server_version(request: Request) -> Response:
    """GET /_synapse/admin/v1/server_version (no authentication, as Synapse)"""
    return json_response(_server(request).server_version())


# --- reports --------------------------------------------------------------------------------


def _reports(kind: str) -> Endpoint:
    async def list_reports(request: Request) -> Response:
        """GET /_synapse/admin/v1/event_reports (and room_reports, user_reports)"""
        requester = await require_user(request)
        direction = request.query_params.get("dir", "b")
        if direction not in ("f", "b"):
            raise MatrixError(Codes.INVALID_PARAM, "Query parameter dir must be f or b")
        offset = query_int(request, "from", 0, minimum=0)
        limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT)
        assert offset is not None and limit is not None
        query = ReportQuery(
            offset=offset,
            limit=limit,
            backwards=direction == "b",
            reporter=request.query_params.get("user_id"),
            room_id=request.query_params.get("room_id"),
            event_sender=request.query_params.get("event_sender_user_id"),
            target_user_id=request.query_params.get("target_user_id"),
            kind=kind,
        )
        found, total, next_offset = await _server(request).list_reports(requester, query)
        out: dict[str, object] = {f"{kind}_reports": found, "total": total}
        if next_offset is not None:
            out["next_token"] = next_offset
        return json_response(out)

    return list_reports


def _report_id(request: Request) -> int:
    raw = request.path_params["report_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise MatrixError(Codes.INVALID_PARAM, "The report ID must be a positive integer")
    return int(raw)


def _report(kind: str) -> Endpoint:
    async def report(request: Request) -> Response:
        """GET and DELETE /_synapse/admin/v1/event_reports/{reportId} (and room_, user_)"""
        requester = await require_user(request)
        report_id = _report_id(request)
        if request.method == "DELETE":
            await _server(request).delete_report(requester, report_id, kind)
            return json_response({})
        return json_response(await _server(request).get_report(requester, report_id, kind))

    return report


# --- registration tokens --------------------------------------------------------------------


async def list_tokens(request: Request) -> Response:
    """GET /_synapse/admin/v1/registration_tokens"""
    requester = await require_user(request)
    valid = query_bool(request, "valid") if "valid" in request.query_params else None
    tokens = await _server(request).list_tokens(requester, valid)
    return json_response({"registration_tokens": tokens})


class NewTokenBody(RequestBody):
    token: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    length: int | None = Field(default=None, ge=1, le=64)
    uses_allowed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    expiry_time: int | None = Field(default=None, ge=0, le=MAX_TIMESTAMP)


async def new_token(request: Request) -> Response:
    """POST /_synapse/admin/v1/registration_tokens/new"""
    requester = await require_user(request)
    body = await parse_body(request, NewTokenBody, empty_ok=True)
    created = await _server(request).create_token(
        requester, body.token, body.length, body.uses_allowed, body.expiry_time
    )
    return json_response(created)


class UpdateTokenBody(RequestBody):
    uses_allowed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    expiry_time: int | None = Field(default=None, ge=0, le=MAX_TIMESTAMP)


async def token(request: Request) -> Response:
    """GET, PUT and DELETE /_synapse/admin/v1/registration_tokens/{token}"""
    requester = await require_user(request)
    server = _server(request)
    name = request.path_params["token"]
    if request.method == "GET":
        return json_response(await server.get_token(requester, name))
    if request.method == "DELETE":
        await server.delete_token(requester, name)
        return json_response({})
    body = await parse_body(request, UpdateTokenBody, empty_ok=True)
    # A field given as null is set to null (unlimited uses, no expiry); one left out stays.
    changes: dict[str, int | None] = {
        k: getattr(body, k) for k in ("uses_allowed", "expiry_time") if k in body.model_fields_set
    }
    return json_response(await server.update_token(requester, name, changes))


# --- server notices -------------------------------------------------------------------------


class NoticeBody(RequestBody):
    user_id: str = Field(max_length=MAX_TEXT_CHARS)
    content: dict[str, Any]
    type: str = Field(default="m.room.message", min_length=1, max_length=255)
    state_key: str | None = Field(default=None, max_length=255)


async def send_server_notice(request: Request) -> Response:
    """POST /_synapse/admin/v1/send_server_notice, PUT .../send_server_notice/{txnId}"""
    requester = await require_user(request)
    body = validate_body(await read_json_object(request), NoticeBody)
    user_id = services_of(request, AdminServerServices).users.local_user(body.user_id)
    event_id = await _server(request).send_server_notice(
        requester,
        user_id,
        body.type,
        body.state_key,
        body.content,
        txn_id=request.path_params.get("txn_id"),
    )
    return json_response({"event_id": event_id})


routes = [
    Route("/v1/server_version", server_version, methods=["GET"]),
    Route("/v1/event_reports", _reports("event"), methods=["GET"]),
    Route("/v1/room_reports", _reports("room"), methods=["GET"]),
    Route("/v1/user_reports", _reports("user"), methods=["GET"]),
    Route("/v1/event_reports/{report_id}", _report("event"), methods=["GET", "DELETE"]),
    Route("/v1/room_reports/{report_id}", _report("room"), methods=["GET", "DELETE"]),
    Route("/v1/user_reports/{report_id}", _report("user"), methods=["GET", "DELETE"]),
    Route("/v1/registration_tokens", list_tokens, methods=["GET"]),
    Route("/v1/registration_tokens/new", new_token, methods=["POST"]),
    Route("/v1/registration_tokens/{token}", token, methods=["GET", "PUT", "DELETE"]),
    Route("/v1/send_server_notice", send_server_notice, methods=["POST"]),
    Route("/v1/send_server_notice/{txn_id}", send_server_notice, methods=["PUT"]),
]
