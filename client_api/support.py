"""Discovery of the server's support contacts (/.well-known/matrix/support)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.config import SupportConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict
from homeserver.web.edge import json_response, services_of


@dataclass(frozen=True, slots=True)
class SupportServices:
    """What the support route reads (built by the composition root)."""

    support: SupportConfig


async def get_support(request: Request) -> Response:
    """GET /.well-known/matrix/support"""
    support = services_of(request, SupportServices).support
    if not support.contacts and support.support_page is None:
        # spec: 404 when the server has no support information to offer.
        raise MatrixError(Codes.NOT_FOUND, "No support information is configured")
    body: JsonDict = {}
    if support.contacts:
        body["contacts"] = [c.model_dump(exclude_none=True) for c in support.contacts]
    if support.support_page is not None:
        body["support_page"] = support.support_page
    return json_response(body)


async def get_policy_server(request: Request) -> Response:
    """GET /.well-known/matrix/policy_server"""
    # spec v1.18: a Policy Server publishes its keys here; this server is not one.
    raise MatrixError(Codes.NOT_FOUND, "This server is not a policy server")


client_routes: list[Route] = []
root_routes = [
    Route("/.well-known/matrix/support", get_support, methods=["GET"]),
    Route("/.well-known/matrix/policy_server", get_policy_server, methods=["GET"]),
]
