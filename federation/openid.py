"""OpenID userinfo: a third party asks whose OpenID token it was given.

Not X-Matrix authenticated: the caller is an integration manager or a widget's back end, not
a homeserver; the token is the credential. Served even with federation off (routing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.accounts.openid import OpenIdService
from homeserver.web.edge import json_response, services_of


@dataclass(frozen=True, slots=True)
class OpenIdUserInfoServices:
    """What the userinfo route calls (built by the composition root)."""

    openid: OpenIdService


async def get_userinfo(request: Request) -> Response:
    """GET /_matrix/federation/v1/openid/userinfo"""
    hs = services_of(request, OpenIdUserInfoServices)
    return json_response(await hs.openid.userinfo(request.query_params.get("access_token")))


routes = [Route("/v1/openid/userinfo", get_userinfo, methods=["GET"])]
