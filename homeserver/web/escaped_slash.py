"""Encoded slashes inside one path segment: event IDs of room version 3.

Room version 3 event IDs are standard base64 and may hold `/` (rooms/v3.md); clients send them
in paths encoded as `%2F`. Starlette routes on the *decoded* path, where that `/` would split
the segment and the route would not match (404), so half of a v3 room's events could not be
fetched, redacted or given a receipt. Routing on the raw path fixes that for every route:
`EscapedSlashMiddleware` decodes the raw path with each `%2F` as a NUL (which no path can
otherwise hold: `request_guard` refuses `%00` before this runs), and `restore_slashes` makes
every route's parameters turn the NUL back into `/`. A request without `%2F` is untouched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from starlette.convertors import Convertor
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

ASGIApp = Any

_MARK = "\x00"
_ENCODED_SLASH = re.compile(rb"%2[fF]")


class EscapedSlashMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") if scope["type"] in ("http", "websocket") else None
        if raw and b"%2" in raw:
            path = raw.split(b"?", 1)[0]
            if _ENCODED_SLASH.search(path) and path.isascii():
                marked = _ENCODED_SLASH.sub(b"%00", path).decode("ascii")
                scope = {**scope, "path": unquote(marked)}
        await self.app(scope, receive, send)


class _Restoring(Convertor[Any]):
    # No `regex`: a convertor's regex is only read when a route's path is compiled, which has
    # happened by the time this wraps it.
    def __init__(self, inner: Convertor[Any]) -> None:
        self._inner = inner

    def convert(self, value: str) -> Any:
        return self._inner.convert(value.replace(_MARK, "/"))

    def to_string(self, value: Any) -> str:
        return self._inner.to_string(value)


def restore_slashes(routes: Sequence[BaseRoute]) -> None:
    """Make the path parameters of ``routes`` (and of the routes they mount) turn the
    middleware's marks back into `/`."""
    for route in routes:
        if isinstance(route, Route | WebSocketRoute):
            # Idempotent: the route lists are module-level, shared by every app built.
            route.param_convertors = {
                k: c if isinstance(c, _Restoring) else _Restoring(c)
                for k, c in route.param_convertors.items()
            }
        elif isinstance(route, Mount):
            restore_slashes(route.routes)
