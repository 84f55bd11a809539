"""Application services' own Client-Server endpoint: the ping (spec v1.7)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import StrictStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.appservice.service import AppServiceQueries
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class AppServiceServices:
    """What the application service routes call (built by the composition root)."""

    appservices: AppServiceQueries


class PingBody(RequestBody):
    transaction_id: StrictStr | None = None


async def post_ping(request: Request) -> Response:
    """POST /_matrix/client/v1/appservice/{appserviceId}/ping"""
    hs = services_of(request, AppServiceServices)
    requester = await require_user(request)
    body = await parse_body(request, PingBody, empty_ok=True)
    duration_ms = await hs.appservices.ping(
        requester, request.path_params["appservice_id"], body.transaction_id
    )
    return json_response({"duration_ms": duration_ms})


client_routes = [
    Route("/v1/appservice/{appservice_id}/ping", post_ping, methods=["POST"]),
]
