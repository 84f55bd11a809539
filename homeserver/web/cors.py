"""CORS (spec: "Web Browser Clients"): every response allows any origin, the API's methods
and the headers clients send, and a preflight ``OPTIONS`` is answered here, whatever the
path, so that browser clients (Element Web) can call the API from their own origin.

A plain ASGI middleware: it appends the same three headers to every response start. It
replaces Starlette's CORSMiddleware, which parsed the request's headers and rebuilt the
response's for every request, a noticeable share of what answering a woken sync costs.
"""

from __future__ import annotations

from typing import Any

ASGIApp = Any

_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    (b"access-control-allow-headers", b"X-Requested-With, Content-Type, Authorization, Date"),
]
# A browser may keep a preflight's answer this long (seconds).
_PREFLIGHT = [
    *_HEADERS,
    (b"access-control-max-age", b"600"),
    (b"content-type", b"application/json"),
    (b"content-length", b"2"),
]


class CorsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            # Every path answers OPTIONS with 200 and an empty object, as a preflight needs.
            await send({"type": "http.response.start", "status": 200, "headers": _PREFLIGHT})
            await send({"type": "http.response.body", "body": b"{}"})
            return

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_cors)
