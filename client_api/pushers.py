"""Pushers (spec: "Client behaviour" of push notifications), and the unsubscribe link of
missed-message mails."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.push.pushers import PusherRequest, PusherService
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class PusherServices:
    """What the routes of pushers call (built by the composition root)."""

    pushers: PusherService


class PusherBody(RequestBody):
    kind: str | None  # required; null deletes
    app_id: str
    pushkey: str
    app_display_name: str | None = None
    device_display_name: str | None = None
    profile_tag: str | None = None
    lang: str | None = None
    data: dict[str, Any] | None = None
    append: bool = False


async def get_pushers(request: Request) -> Response:
    """GET /_matrix/client/v3/pushers"""
    hs = services_of(request, PusherServices)
    requester = await require_user(request)
    return json_response({"pushers": await hs.pushers.get_pushers(requester)})


async def post_pushers_set(request: Request) -> Response:
    """POST /_matrix/client/v3/pushers/set"""
    hs = services_of(request, PusherServices)
    requester = await require_user(request)
    body = await parse_body(request, PusherBody)
    await hs.pushers.set_pusher(requester, PusherRequest(**body.model_dump()))
    return json_response({})


_PAGE = (
    '<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title></head>'
    "<body><p>{text}</p>{form}</body></html>"
)


async def unsubscribe(request: Request) -> Response:
    """GET (a page with a button) and POST (RFC 8058 one-click) of the link in a mail."""
    hs = services_of(request, PusherServices)
    token = request.query_params.get("token", "")
    if request.method == "GET":
        if hs.pushers.unsubscriber.parse(token) is None:
            raise MatrixError(Codes.FORBIDDEN, "Invalid or expired unsubscribe link")
        form = (
            f'<form method="post" action="?token={html.escape(token, quote=True)}">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return HTMLResponse(
            _PAGE.format(
                title="Unsubscribe", form=form, text="Stop e-mail notifications to this address?"
            )
        )
    await hs.pushers.unsubscribe(token)
    return HTMLResponse(
        _PAGE.format(
            title="Unsubscribed", form="", text="You will no longer receive these e-mails."
        )
    )


client_routes = [
    Route("/v3/pushers", get_pushers, methods=["GET"]),
    Route("/v3/pushers/set", post_pushers_set, methods=["POST"]),
]
root_routes = [Route("/_homeserver/client/unsubscribe", unsubscribe, methods=["GET", "POST"])]
