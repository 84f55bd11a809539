"""The HTTP edge shared by every route: body parsing, authentication, JSON responses, errors.

Routes import from here; services never do. Routes reach their services through
``services_of(request, TheirArea)``: the composition root (``homeserver/app.py``) registers one
small object per route area on ``app.state.services``, so this module and the routes never
import the composition root.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from homeserver.accounts.tokens import AuthService
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.json_limits import loads_limited
from homeserver.core.pool_guard import PoolExhausted
from homeserver.core.render import dumps_item, dumps_items
from homeserver.core.types import Requester
from homeserver.web.guest import guest_may_call

logger = logging.getLogger(__name__)


class RequestBody(BaseModel):
    """A request body: strict (``"1"`` is not a number, ``true`` is not an int)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


BodyT = TypeVar("BodyT", bound=RequestBody)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(content, status_code=status_code, headers=headers)


def items_response(content: Any, what: str) -> Response:
    """A response listing stored items (events, account data, to-device messages): an item
    that cannot be rendered is logged and left out, the rest is served (homeserver.core.render).
    ``what`` names the response in the log."""
    return Response(dumps_items(content, what), media_type="application/json")


def item_response(content: Any, what: str) -> Response:
    """A response that is one stored item: 404 ``M_NOT_FOUND`` if it cannot be rendered."""
    return Response(dumps_item(content, what), media_type="application/json")


ServicesT = TypeVar("ServicesT")


@dataclass(frozen=True, slots=True)
class EdgeServices:
    """What the steps every route shares need: whose token it is, how large a body may be."""

    tokens: AuthService
    max_request_body_bytes: int
    # Records where sessions are seen from (the admin API's whois, devices' last seen).
    sessions: SessionRecorder | None = None


class SessionRecorder(Protocol):
    async def seen(self, requester: Requester, ip: str, user_agent: str) -> None: ...


def services_of(connection: HTTPConnection, area: type[ServicesT]) -> ServicesT:
    """The services of one route area, as the composition root registered them."""
    services: Mapping[type, object] = connection.app.state.services
    found = services[area]
    assert isinstance(found, area)
    return found


async def read_json(request: Request, *, empty_ok: bool = False) -> Any:
    """The decoded body; ``M_NOT_JSON`` unless it is JSON, ``M_TOO_LARGE`` past the size limit,
    ``M_BAD_JSON`` past the structure limits of ``homeserver.core.json_limits``.

    ``empty_ok``: an empty body reads as ``{}`` (clients send none to /join and /leave).
    """
    raw = await read_body(request)
    if empty_ok and not raw.strip():
        return {}
    return loads_limited(raw)


async def read_body(request: Request, limit: int | None = None) -> bytes:
    """The raw body, ``M_TOO_LARGE`` past the configured limit (or ``limit``, for the few
    routes whose bodies the spec lets grow past a client's)."""
    if limit is None:
        limit = services_of(request, EdgeServices).max_request_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise MatrixError(Codes.TOO_LARGE, f"Request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise MatrixError(Codes.TOO_LARGE, f"Request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    body = await read_json(request, empty_ok=empty_ok)
    if not isinstance(body, dict):
        raise MatrixError(Codes.BAD_JSON, "Body must be a JSON object")
    return body


def validate_body(body: dict[str, Any], model: type[BodyT]) -> BodyT:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "missing":
            raise MatrixError(Codes.MISSING_PARAM, f"Missing parameter: {where}") from e
        raise MatrixError(Codes.BAD_JSON, f"Invalid parameter {where}: {first['msg']}") from e


async def parse_body(request: Request, model: type[BodyT], *, empty_ok: bool = False) -> BodyT:
    return validate_body(await read_json_object(request, empty_ok=empty_ok), model)


def access_token_of(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None and "access_token" in request.query_params:
        # The spec asks clients to use one or the other; which one to believe cannot be
        # guessed, so neither is (as Synapse): docs/security.md.
        raise MatrixError(
            Codes.MISSING_TOKEN,
            "Access token given in both the Authorization header and the query string",
        )
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MatrixError(Codes.MISSING_TOKEN, "Invalid Authorization header")
        return token.strip()
    # Deprecated in spec v1.11 but still part of the API; clients may use it.
    return request.query_params.get("access_token")


async def require_user(request: Request, *, allow_locked: bool = False) -> Requester:
    """The requester; ``allow_locked``: a locked account's token is accepted (only the
    logout endpoints, spec "Account locking")."""
    token = access_token_of(request)
    if token is None:
        raise MatrixError(Codes.MISSING_TOKEN, "Missing access token")
    query = request.query_params
    edge = services_of(request, EdgeServices)
    requester = await edge.tokens.get_requester(
        token,
        # Application services act as users of their namespaces, and as their devices.
        user_id=query.get("user_id"),
        device_id=query.get("device_id", query.get("org.matrix.msc3202.device_id")),
        allow_locked=allow_locked,
    )
    if requester.is_guest and not guest_may_call(request.method, request.url.path):
        raise MatrixError(Codes.GUEST_ACCESS_FORBIDDEN, "Guest access is not allowed here")
    request.state.requester = requester
    if edge.sessions is not None:
        client = request.client
        await edge.sessions.seen(
            requester,
            client.host if client is not None else "",
            request.headers.get("user-agent", ""),
        )
    return requester


def query_int(
    request: Request,
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(
            Codes.INVALID_PARAM, f"Query parameter {name} must be an integer"
        ) from None
    if minimum is not None and value < minimum:
        raise MatrixError(Codes.INVALID_PARAM, f"Query parameter {name} must be >= {minimum}")
    if maximum is not None and value > maximum:
        value = maximum
    return value


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise MatrixError(Codes.INVALID_PARAM, f"Query parameter {name} must be true or false")


async def matrix_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MatrixError)
    headers = None
    if exc.code == Codes.LIMIT_EXCEEDED and "retry_after_ms" in exc.extra:
        headers = {"Retry-After": str(max(1, int(exc.extra["retry_after_ms"]) // 1000))}
    return json_response(exc.to_json(), status_code=exc.status, headers=headers)


async def pool_exhausted_handler(request: Request, exc: Exception) -> Response:
    """No database connection became free in time: backpressure, not a bug (the pool
    counts and logs it); the client retries after a while, as it would on a rate limit."""
    assert isinstance(exc, PoolExhausted)
    retry_after_ms = int(exc.retry_after_s * 1000)
    error = MatrixError(
        Codes.LIMIT_EXCEEDED,
        "The server is busy; try again later",
        status=503,
        retry_after_ms=retry_after_ms,
    )
    return await matrix_error_handler(request, error)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (404, 405):
        # spec: unknown endpoints (and unknown methods on known ones) are M_UNRECOGNIZED.
        return json_response(
            {"errcode": Codes.UNRECOGNIZED, "error": "Unrecognized request"},
            status_code=exc.status_code,
        )
    return json_response(
        {"errcode": Codes.UNKNOWN, "error": str(exc.detail)}, status_code=exc.status_code
    )


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    logger.error(
        "unhandled error", exc_info=exc, extra={"path": request.url.path, "method": request.method}
    )
    return json_response(
        {"errcode": Codes.UNKNOWN, "error": "Internal server error"}, status_code=500
    )
