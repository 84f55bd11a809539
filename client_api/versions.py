"""Discovery: versions, well-known, capabilities."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.types import JsonDict
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.sync.sliding.body import UNSTABLE_FEATURE as SLIDING_SYNC
from homeserver.web.edge import json_response, require_user, services_of
from homeserver.websocket import UNSTABLE_FEATURE


@dataclass(frozen=True, slots=True)
class VersionServices:
    """What the routes of discovery call (built by the composition root)."""

    base_url: str
    websocket_enabled: bool
    default_room_version: str
    email_enabled: bool
    get_login_token: bool = False  # POST /login/get_token is served (config)


SUPPORTED_VERSIONS = [
    "r0.6.1",
    "v1.1",
    "v1.2",
    "v1.3",
    "v1.4",
    "v1.5",
    "v1.6",
    "v1.7",
    "v1.8",
    "v1.9",
    "v1.10",
    "v1.11",
    "v1.12",
    # Room reports (v1.13) and user reports (v1.14); v1.15 needs /hierarchy, which is not
    # served yet (issue 20's checklist).
    "v1.13",
    "v1.14",
]


def capabilities(hs: VersionServices) -> JsonDict:
    """spec: GET /capabilities."""
    return {
        "m.change_password": {"enabled": True},
        "m.room_versions": {
            "default": hs.default_room_version,
            "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS},
        },
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        # E-mail addresses can be added and removed once the server can mail.
        "m.3pid_changes": {"enabled": hs.email_enabled},
        "m.get_login_token": {"enabled": hs.get_login_token},
    }


async def get_versions(request: Request) -> Response:
    """GET /_matrix/client/versions"""
    hs = services_of(request, VersionServices)
    # docs/websocket.md: clients look for this flag before trying the WebSocket transport.
    unstable = {
        UNSTABLE_FEATURE: hs.websocket_enabled,
        # MSC4186: Element X and other sliding sync clients look for this flag.
        SLIDING_SYNC: True,
        # MSC4222: /sync's use_state_after (the unstable name too).
        "org.matrix.msc4222": True,
        # MSC4140: delayed events (Element Call).
        "org.matrix.msc4140": True,
    }
    return json_response({"versions": SUPPORTED_VERSIONS, "unstable_features": unstable})


async def get_well_known_client(request: Request) -> Response:
    """GET /.well-known/matrix/client"""
    hs = services_of(request, VersionServices)
    return json_response({"m.homeserver": {"base_url": hs.base_url}})


async def get_capabilities(request: Request) -> Response:
    """GET /_matrix/client/v3/capabilities"""
    hs = services_of(request, VersionServices)
    await require_user(request)
    return json_response({"capabilities": capabilities(hs)})


client_routes = [
    Route("/versions", get_versions, methods=["GET"]),
    Route("/v3/capabilities", get_capabilities, methods=["GET"]),
]
root_routes = [Route("/.well-known/matrix/client", get_well_known_client, methods=["GET"])]
