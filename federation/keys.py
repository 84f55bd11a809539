"""The key server: our keys, and the notary endpoints that serve other servers' keys."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import is_valid_server_name
from homeserver.federation.keyring import Keyring
from homeserver.federation.local_keys import LocalKeys
from homeserver.web.edge import json_response, query_int, read_json_object, services_of

# One notary query fetches, at worst, from each server it names: a bound on the fan-out.
MAX_QUERY_SERVERS = 100
MAX_QUERY_KEY_IDS = 100


@dataclass(frozen=True, slots=True)
class KeyServerServices:
    """What the key server's routes call (built by the composition root)."""

    local_keys: LocalKeys
    keyring: Keyring
    clock: Clock


async def get_server_keys(request: Request) -> Response:
    """GET /_matrix/key/v2/server"""
    return json_response(services_of(request, KeyServerServices).local_keys.key_response())


def _server_name(value: Any) -> str:
    if not isinstance(value, str) or not is_valid_server_name(value):
        raise MatrixError(Codes.INVALID_PARAM, f"Invalid server name: {value!r}")
    return value


async def get_query_keys(request: Request) -> Response:
    """GET /_matrix/key/v2/query/{serverName} (and the deprecated .../{keyId}, which older
    servers and SyTest still call, answered for that key ID)"""
    hs = services_of(request, KeyServerServices)
    server_name = _server_name(request.path_params["server_name"])
    key_id = request.path_params.get("key_id")
    minimum = query_int(request, "minimum_valid_until_ts", minimum=0)
    responses = await hs.keyring.key_responses(
        server_name,
        () if key_id is None else (key_id,),
        hs.clock.now_ms() if minimum is None else minimum,
    )
    return json_response({"server_keys": responses})


async def post_query_keys(request: Request) -> Response:
    """POST /_matrix/key/v2/query"""
    hs = services_of(request, KeyServerServices)
    body = await read_json_object(request)
    query = body.get("server_keys")
    if not isinstance(query, dict):
        raise MatrixError(Codes.BAD_JSON, "server_keys must be an object")
    if len(query) > MAX_QUERY_SERVERS:
        raise MatrixError(Codes.TOO_LARGE, f"At most {MAX_QUERY_SERVERS} servers per query")
    now = hs.clock.now_ms()
    wanted: list[tuple[str, tuple[str, ...], int]] = []
    for server_name, criteria in query.items():
        _server_name(server_name)
        if not isinstance(criteria, dict) or len(criteria) > MAX_QUERY_KEY_IDS:
            raise MatrixError(
                Codes.BAD_JSON,
                f"server_keys.{server_name}: an object of at most {MAX_QUERY_KEY_IDS} key IDs",
            )
        minimums = []
        for key_id, criterion in criteria.items():
            value = criterion.get("minimum_valid_until_ts") if isinstance(criterion, dict) else 0
            if not isinstance(criterion, dict) or (
                value is not None and (not isinstance(value, int) or isinstance(value, bool))
            ):
                raise MatrixError(
                    Codes.BAD_JSON,
                    f"server_keys.{server_name}.{key_id}.minimum_valid_until_ts: an integer",
                )
            minimums.append(now if value is None else value)
        # The earliest asked for: keys valid until then answer every criterion's key ID
        # that is valid at all (a later criterion on another ID is still served its key).
        minimum = min(minimums, default=now)
        wanted.append((server_name, tuple(criteria), minimum))
    # Each server's keys are fetched, where need be, at the same time as the others'.
    answers = await asyncio.gather(
        *(hs.keyring.key_responses(name, key_ids, minimum) for name, key_ids, minimum in wanted)
    )
    return json_response({"server_keys": [r for answer in answers for r in answer]})


key_routes = [
    Route("/v2/server", get_server_keys, methods=["GET"]),
    # Deprecated forms with a key ID (removed from the spec, still called by older servers
    # and SyTest): the whole key set answers, as Synapse does.
    Route("/v2/server/{key_id}", get_server_keys, methods=["GET"]),
    Route("/v2/query/{server_name}/{key_id}", get_query_keys, methods=["GET"]),
    Route("/v2/query/{server_name}", get_query_keys, methods=["GET"]),
    Route("/v2/query", post_query_keys, methods=["POST"]),
]
