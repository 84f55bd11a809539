"""Refuse, before routing, request targets no route can serve safely.

A NUL character (``%00``) in the path or the query string would reach PostgreSQL as part of
a text parameter (a type, a state key, a tag, an ID), which it refuses with an error of its
own: such a request is answered ``400 M_INVALID_PARAM`` here, for every route at once.
A plain ASGI middleware: one substring test per request.
"""

from __future__ import annotations

from typing import Any

import orjson

from homeserver.core.errors import Codes

ASGIApp = Any

_BODY = orjson.dumps(
    {"errcode": Codes.INVALID_PARAM, "error": "NUL character in the request path or query"}
)
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
]


class RequestGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 400, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": _BODY})
            return
        await self.app(scope, receive, send)
