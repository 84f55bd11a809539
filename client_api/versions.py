"""Discovery: versions, well-known, capabilities."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.accounts.profile import FIELDS as PROFILE_FIELDS
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
    "v1.13",  # room reports
    "v1.14",  # user reports
    "v1.15",  # /room_summary; the OAuth 2.0 API (optional: oauth.enabled)
    "v1.16",  # room version 12, m.profile_fields (displayname and avatar_url only), format
    "v1.17",  # application services' devices (MSC4190, MSC4326)
    "v1.18",  # admin lock and suspend, invite permissions, redactions through /send
    "v1.19",  # /mutual_rooms, unsigned.replaces_state
]
# Not served of those versions, all optional: custom profile fields (m.profile_fields lists
# the two that exist), the m.oauth UIA stage for devices signed in through OAuth, the
# m.forget_forced_upon_leave behaviour (its capability's absence says so).


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
        # spec v1.16: only these two profile fields can be set (no custom fields yet).
        "m.profile_fields": {"enabled": True, "allowed": list(PROFILE_FIELDS)},
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
