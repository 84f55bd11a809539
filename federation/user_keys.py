"""End-to-end encryption keys of our users, for other servers: devices with their keys,
cross-signing keys, one-time keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from federation.edge import authenticated_origin
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.e2ee.federation_keys import FederationKeyService
from homeserver.web.edge import RequestBody, json_response, services_of, validate_body


@dataclass(frozen=True, slots=True)
class UserKeyServices:
    """What the federation routes of our users' keys call (built by the composition root)."""

    federation_keys: FederationKeyService


# Bounds on one request: each user is a condition of one database query.
MAX_USERS = 1000
MAX_DEVICES = 10_000


class QueryKeysBody(RequestBody):
    device_keys: dict[str, list[str]]


class ClaimKeysBody(RequestBody):
    one_time_keys: dict[str, dict[str, str]]


def _object(content: Any) -> dict[str, Any]:
    if not isinstance(content, dict):
        raise MatrixError(Codes.BAD_JSON, "The body must be a JSON object")
    return content


def _check_size(users: int, devices: int) -> None:
    if users > MAX_USERS or devices > MAX_DEVICES:
        raise MatrixError(
            Codes.TOO_LARGE, f"At most {MAX_USERS} users and {MAX_DEVICES} devices per request"
        )


async def post_user_keys_query(request: Request) -> Response:
    """POST /_matrix/federation/v1/user/keys/query"""
    hs = services_of(request, UserKeyServices)
    _, content = await authenticated_origin(request)
    body = validate_body(_object(content), QueryKeysBody)
    _check_size(len(body.device_keys), sum(len(d) for d in body.device_keys.values()))
    return json_response(await hs.federation_keys.query_keys(body.device_keys))


async def post_user_keys_claim(request: Request) -> Response:
    """POST /_matrix/federation/v1/user/keys/claim"""
    hs = services_of(request, UserKeyServices)
    _, content = await authenticated_origin(request)
    body = validate_body(_object(content), ClaimKeysBody)
    _check_size(len(body.one_time_keys), sum(len(d) for d in body.one_time_keys.values()))
    return json_response(await hs.federation_keys.claim_keys(body.one_time_keys))


async def get_user_devices(request: Request) -> Response:
    """GET /_matrix/federation/v1/user/devices/{userId}"""
    hs = services_of(request, UserKeyServices)
    await authenticated_origin(request)
    user_id = UserID.parse(request.path_params["user_id"])
    return json_response(await hs.federation_keys.user_devices(user_id))


routes = [
    Route("/v1/user/devices/{user_id:path}", get_user_devices, methods=["GET"]),
    Route("/v1/user/keys/query", post_user_keys_query, methods=["POST"]),
    Route("/v1/user/keys/claim", post_user_keys_claim, methods=["POST"]),
]
