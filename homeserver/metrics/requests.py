"""Times every HTTP request into ``Metrics.requests``, by route template, method and status
class: the labels are bounded by the code (a raw path would make one series per room)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from homeserver.metrics.registry import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))
_UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route that answered (``/_matrix/client/v3/rooms/{room_id}/...``):
    the router leaves the innermost route and its mounts' prefix in the scope."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    # A mount whose routes all missed is left in the scope too: only an endpoint's route
    # (not a mount) names what answered.
    if not isinstance(path, str) or getattr(route, "endpoint", None) is None:
        return _UNMATCHED
    root = str(scope.get("root_path", ""))
    prefix = root[len(str(scope.get("app_root_path", ""))) :]
    return prefix + path


class RequestMetrics:
    """ASGI middleware, outermost but for Starlette's error handler: an exception that
    passes through is counted as a 500, which that handler answers."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics
        # Label lookups are the costly part of an observation: each series is looked up once.
        self._series: dict[tuple[str, str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics = self._metrics
        started = time.perf_counter()
        metrics.requests_in_flight += 1
        try:
            await self._app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            metrics.requests_in_flight -= 1
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (route_template(scope), method, f"{status // 100}xx")
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = metrics.requests.labels(*key)
            series.observe(elapsed)
