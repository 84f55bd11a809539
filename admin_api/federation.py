"""The admin API on federation destinations: Synapse's
``/_synapse/admin/v1/federation/destinations...`` paths and shapes."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.admin.federation import AdminFederation, Page
from homeserver.core.errors import Codes, MatrixError
from homeserver.storage.admin_federation import DESTINATION_ORDERS
from homeserver.web.edge import json_response, query_int, require_user, services_of

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class AdminFederationServices:
    federation: AdminFederation


def _service(request: Request) -> AdminFederation:
    return services_of(request, AdminFederationServices).federation


def _page(request: Request, default_order: str = "destination") -> Page:
    order_by = request.query_params.get("order_by", default_order)
    if order_by not in DESTINATION_ORDERS:
        raise MatrixError(Codes.INVALID_PARAM, f"Unknown order_by: {order_by}")
    direction = request.query_params.get("dir", "f")
    if direction not in ("f", "b"):
        raise MatrixError(Codes.INVALID_PARAM, "Query parameter dir must be f or b")
    offset = query_int(request, "from", 0, minimum=0)
    limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT)
    assert offset is not None and limit is not None
    return Page(offset, limit, order_by, direction == "b")


def _paged(key: str, found: list[object], total: int, next_offset: int | None) -> Response:
    out: dict[str, object] = {key: found, "total": total}
    if next_offset is not None:
        out["next_token"] = str(next_offset)  # a string, as Synapse's
    return json_response(out)


async def destinations(request: Request) -> Response:
    """GET /_synapse/admin/v1/federation/destinations"""
    requester = await require_user(request)
    page = _page(request)
    search = request.query_params.get("destination")
    found, total, next_offset = await _service(request).destinations(requester, page, search)
    return _paged("destinations", list(found), total, next_offset)


async def destination(request: Request) -> Response:
    """GET /_synapse/admin/v1/federation/destinations/{destination}"""
    requester = await require_user(request)
    name = request.path_params["destination"]
    return json_response(await _service(request).destination(requester, name))


async def destination_rooms(request: Request) -> Response:
    """GET /_synapse/admin/v1/federation/destinations/{destination}/rooms"""
    requester = await require_user(request)
    if "order_by" in request.query_params:
        raise MatrixError(Codes.INVALID_PARAM, "Rooms are ordered by room ID only")
    page = _page(request)
    name = request.path_params["destination"]
    found, total, next_offset = await _service(request).rooms(requester, name, page)
    return _paged("rooms", list(found), total, next_offset)


async def reset_connection(request: Request) -> Response:
    """POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection"""
    requester = await require_user(request)
    await _service(request).reset_connection(requester, request.path_params["destination"])
    return json_response({})


routes = [
    Route("/v1/federation/destinations", destinations, methods=["GET"]),
    Route("/v1/federation/destinations/{destination}", destination, methods=["GET"]),
    Route("/v1/federation/destinations/{destination}/rooms", destination_rooms, methods=["GET"]),
    Route(
        "/v1/federation/destinations/{destination}/reset_connection",
        reset_connection,
        methods=["POST"],
    ),
]
