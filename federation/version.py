"""GET /_matrix/federation/v1/version: this server's implementation."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.web.edge import json_response


def _version() -> str:
    try:
        return version("homeserver")
    except PackageNotFoundError:
        return "0.0.0"


SERVER = {"name": "homeserver", "version": _version()}


async def get_version(request: Request) -> Response:
    """GET /_matrix/federation/v1/version"""
    return json_response({"server": SERVER})


routes = [Route("/v1/version", get_version, methods=["GET"])]
