"""End-to-end encryption keys (spec: "Key management API" and "Cross-signing")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from client_api.account import challenge_response, uia_fingerprint
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.streams import StreamToken
from homeserver.core.types import JsonDict
from homeserver.e2ee.keys import E2eKeyService
from homeserver.web.edge import (
    RequestBody,
    json_response,
    parse_body,
    read_json_object,
    require_user,
    services_of,
)


@dataclass(frozen=True, slots=True)
class KeyServices:
    """What the routes of device and cross-signing keys call (built by the composition root)."""

    e2e_keys: E2eKeyService


Signatures = dict[str, dict[str, str]]


class SignedKeyBody(RequestBody):
    """A signed one-time or fallback key; other keys (``fallback``) are signed too."""

    model_config = ConfigDict(extra="allow")
    key: str
    signatures: Signatures


class DeviceKeysBody(RequestBody):
    model_config = ConfigDict(extra="allow")  # whatever the device signed is kept
    user_id: str
    device_id: str
    algorithms: list[str]
    keys: dict[str, str]
    signatures: Signatures


class UploadKeysBody(RequestBody):
    device_keys: DeviceKeysBody | None = None
    one_time_keys: dict[str, str | SignedKeyBody] = Field(default_factory=dict)
    fallback_keys: dict[str, str | SignedKeyBody] = Field(default_factory=dict)


def _signed(value: str | RequestBody) -> Any:
    """The JSON the client sent, as it signed it: unset fields stay out, extras stay in."""
    return value if isinstance(value, str) else value.model_dump(exclude_unset=True)


async def post_keys_upload(request: Request) -> Response:
    """POST /_matrix/client/v3/keys/upload"""
    hs = services_of(request, KeyServices)
    requester = await require_user(request)
    body = await parse_body(request, UploadKeysBody)
    counts = await hs.e2e_keys.upload_keys(
        requester,
        _signed(body.device_keys) if body.device_keys is not None else None,
        {k: _signed(v) for k, v in body.one_time_keys.items()},
        {k: _signed(v) for k, v in body.fallback_keys.items()},
    )
    return json_response({"one_time_key_counts": counts})


class QueryKeysBody(RequestBody):
    device_keys: dict[str, list[str]]
    timeout: int | None = None  # ms to wait for remote servers


async def post_keys_query(request: Request) -> Response:
    """POST /_matrix/client/v3/keys/query"""
    hs = services_of(request, KeyServices)
    requester = await require_user(request)
    body = await parse_body(request, QueryKeysBody)
    return json_response(await hs.e2e_keys.query_keys(requester, body.device_keys, body.timeout))


class ClaimKeysBody(RequestBody):
    one_time_keys: dict[str, dict[str, str]]
    timeout: int | None = None


async def post_keys_claim(request: Request) -> Response:
    """POST /_matrix/client/v3/keys/claim"""
    hs = services_of(request, KeyServices)
    await require_user(request)
    body = await parse_body(request, ClaimKeysBody)
    return json_response(await hs.e2e_keys.claim_keys(body.one_time_keys, body.timeout))


async def get_keys_changes(request: Request) -> Response:
    """GET /_matrix/client/v3/keys/changes"""
    hs = services_of(request, KeyServices)
    requester = await require_user(request)
    tokens = []
    for name in ("from", "to"):
        raw = request.query_params.get(name)
        if raw is None:
            raise MatrixError(Codes.MISSING_PARAM, f"Missing query parameter: {name}")
        tokens.append(StreamToken.parse(raw))
    return json_response(await hs.e2e_keys.key_changes(requester, tokens[0], tokens[1]))


class CrossSigningKeyBody(RequestBody):
    model_config = ConfigDict(extra="allow")
    user_id: str
    usage: list[str]
    keys: dict[str, str]
    signatures: Signatures | None = None


class DeviceSigningUploadBody(RequestBody):
    master_key: CrossSigningKeyBody | None = None
    self_signing_key: CrossSigningKeyBody | None = None
    user_signing_key: CrossSigningKeyBody | None = None
    auth: dict[str, Any] | None = None


async def post_device_signing_upload(request: Request) -> Response:
    """POST /_matrix/client/v3/keys/device_signing/upload"""
    hs = services_of(request, KeyServices)
    requester = await require_user(request)
    body = await parse_body(request, DeviceSigningUploadBody)
    keys = {
        key_type: _signed(key)
        for key_type, key in (
            ("master", body.master_key),
            ("self_signing", body.self_signing_key),
            ("user_signing", body.user_signing_key),
        )
        if key is not None
    }
    challenge = await hs.e2e_keys.upload_cross_signing_keys(
        requester, keys, body.auth, uia_fingerprint(request)
    )
    if challenge is not None:
        return challenge_response(challenge)
    return json_response({})


async def post_signatures_upload(request: Request) -> Response:
    """POST /_matrix/client/v3/keys/signatures/upload"""
    hs = services_of(request, KeyServices)
    requester = await require_user(request)
    body = await read_json_object(request)
    signed: dict[str, dict[str, JsonDict]] = {}
    for user_id, by_key in body.items():
        if not isinstance(by_key, dict) or not all(isinstance(o, dict) for o in by_key.values()):
            raise MatrixError(Codes.BAD_JSON, f"{user_id} must map key IDs to signed objects")
        signed[user_id] = by_key
    failures = await hs.e2e_keys.upload_signatures(requester, signed)
    return json_response({"failures": failures})


client_routes = [
    Route("/v3/keys/upload", post_keys_upload, methods=["POST"]),
    Route("/v3/keys/query", post_keys_query, methods=["POST"]),
    Route("/v3/keys/claim", post_keys_claim, methods=["POST"]),
    Route("/v3/keys/changes", get_keys_changes, methods=["GET"]),
    Route("/v3/keys/device_signing/upload", post_device_signing_upload, methods=["POST"]),
    Route("/v3/keys/signatures/upload", post_signatures_upload, methods=["POST"]),
]
