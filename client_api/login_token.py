"""POST /login/get_token: a signed-in device lets a new one sign in (spec v1.7, MSC3882)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from client_api.account import challenge_response, uia_fingerprint
from homeserver.accounts.login_tokens import LoginTokens
from homeserver.accounts.uia import AuthChallenge
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class LoginTokenServices:
    """What the login token route calls (built by the composition root)."""

    login_tokens: LoginTokens


class GetTokenBody(RequestBody):
    auth: dict[str, Any] | None = None


async def post_get_token(request: Request) -> Response:
    """POST /_matrix/client/v1/login/get_token"""
    hs = services_of(request, LoginTokenServices)
    requester = await require_user(request)
    body = await parse_body(request, GetTokenBody, empty_ok=True)
    result = await hs.login_tokens.get_token(requester, body.auth, uia_fingerprint(request))
    if isinstance(result, AuthChallenge):
        return challenge_response(result)
    return json_response(result)


client_routes = [
    Route("/v1/login/get_token", post_get_token, methods=["POST"]),
    Route("/unstable/org.matrix.msc3882/login/get_token", post_get_token, methods=["POST"]),
]
