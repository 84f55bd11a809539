"""OpenID: tokens that prove the user's identity to third parties."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.accounts.openid import OpenIdService
from homeserver.core.ids import UserID
from homeserver.web.edge import json_response, read_json_object, require_user, services_of


@dataclass(frozen=True, slots=True)
class OpenIdServices:
    """What the OpenID route calls (built by the composition root)."""

    openid: OpenIdService


async def request_openid_token(request: Request) -> Response:
    """POST /_matrix/client/v3/user/{userId}/openid/request_token"""
    hs = services_of(request, OpenIdServices)
    requester = await require_user(request)
    user_id = UserID.parse(request.path_params["user_id"])
    await read_json_object(request)  # spec: an empty object, reserved for future use
    return json_response(await hs.openid.request_token(requester, user_id))


client_routes = [
    Route("/v3/user/{user_id}/openid/request_token", request_openid_token, methods=["POST"]),
    Route("/r0/user/{user_id}/openid/request_token", request_openid_token, methods=["POST"]),
]
