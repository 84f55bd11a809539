"""What every federation route shares: the authenticated origin of a request."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request

from homeserver.core.errors import Codes, MatrixError
from homeserver.web.edge import homeserver_of, read_body


def request_uri(request: Request) -> str:
    """The request target as the sender signed it: the path as sent (still percent-encoded)
    and the query string, if any."""
    raw = request.scope.get("raw_path")
    path = raw.split(b"?")[0].decode("latin-1") if raw else quote(request.scope["path"])
    query = request.scope.get("query_string", b"")
    return path + ("?" + query.decode("latin-1") if query else "")


async def authenticated_origin(request: Request) -> tuple[str, Any]:
    """The server a request comes from, verified by its X-Matrix signature, and its JSON
    body (None without one). 401 M_UNAUTHORIZED unless the signature is right."""
    hs = homeserver_of(request)
    body = await read_body(request)
    content = None
    if body.strip():
        try:
            content = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise MatrixError(Codes.NOT_JSON, "Content not JSON") from None
    origin = await hs.federation.auth.authenticate(
        request.method, request_uri(request), request.headers.getlist("authorization"), content
    )
    return origin, content
