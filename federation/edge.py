"""What every federation route shares: the authenticated origin of a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request

from homeserver.core.json_limits import loads_limited
from homeserver.federation.auth import FederationAuthenticator
from homeserver.web.edge import read_body, services_of


@dataclass(frozen=True, slots=True)
class FederationEdgeServices:
    """What authenticating a request from another server needs (built by the composition
    root)."""

    auth: FederationAuthenticator


def request_uri(request: Request) -> str:
    """The request target as the sender signed it: the path as sent (still percent-encoded)
    and the query string, if any."""
    raw = request.scope.get("raw_path")
    path = raw.split(b"?")[0].decode("latin-1") if raw else quote(request.scope["path"])
    query = request.scope.get("query_string", b"")
    return path + ("?" + query.decode("latin-1") if query else "")


async def authenticated_origin(
    request: Request, max_body_bytes: int | None = None, *, int_range: bool = True
) -> tuple[str, Any]:
    """The server a request comes from, verified by its X-Matrix signature, and its JSON
    body (None without one). 401 M_UNAUTHORIZED unless the signature is right.

    The body is read as a client's is: within the body limit (``M_TOO_LARGE``), JSON
    (``M_NOT_JSON``) within the limits of ``homeserver.core.json_limits`` (``M_BAD_JSON``).
    ``max_body_bytes`` replaces the body limit for a route whose bodies may be larger
    (transactions); ``int_range`` False leaves the integer range to the route (a
    transaction checks it per PDU, by the room's version, and per EDU)."""
    auth = services_of(request, FederationEdgeServices).auth
    body = await read_body(request, max_body_bytes)
    content = loads_limited(body, int_range=int_range) if body.strip() else None
    origin = await auth.authenticate(
        request.method, request_uri(request), request.headers.getlist("authorization"), content
    )
    return origin, content
