"""Third-party networks (spec: Client-Server API, "Third-party networks"): the protocols
application services bridge, and lookups of their locations and users, asked of them."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.appservice.service import AppServiceQueries
from homeserver.core.errors import Codes, MatrixError
from homeserver.web.edge import json_response, require_user, services_of


@dataclass(frozen=True, slots=True)
class ThirdPartyServices:
    """What the third-party routes call (built by the composition root)."""

    appservices: AppServiceQueries


async def get_protocols(request: Request) -> Response:
    """GET /_matrix/client/v3/thirdparty/protocols"""
    hs = services_of(request, ThirdPartyServices)
    await require_user(request)
    return json_response(await hs.appservices.protocols())


async def get_protocol(request: Request) -> Response:
    """GET /_matrix/client/v3/thirdparty/protocol/{protocol}"""
    hs = services_of(request, ThirdPartyServices)
    await require_user(request)
    return json_response(await hs.appservices.protocol(request.path_params["protocol"]))


def _fields(request: Request) -> dict[str, str]:
    # spec: every query parameter is a field of the protocol (one value each).
    return {k: v for k, v in request.query_params.items() if k != "access_token"}


async def get_location_by_protocol(request: Request) -> Response:
    """GET /_matrix/client/v3/thirdparty/location/{protocol}"""
    hs = services_of(request, ThirdPartyServices)
    await require_user(request)
    found = await hs.appservices.lookup(
        "location", request.path_params["protocol"], _fields(request)
    )
    return json_response(found)


async def get_user_by_protocol(request: Request) -> Response:
    """GET /_matrix/client/v3/thirdparty/user/{protocol}"""
    hs = services_of(request, ThirdPartyServices)
    await require_user(request)
    found = await hs.appservices.lookup("user", request.path_params["protocol"], _fields(request))
    return json_response(found)


async def get_location_by_alias(request: Request) -> Response:
    """GET /_matrix/client/v3/thirdparty/location"""
    hs = services_of(request, ThirdPartyServices)
    await require_user(request)
    alias = request.query_params.get("alias")
    if alias is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: alias")
    found = await hs.appservices.reverse_lookup("location", "alias", alias)
    if not found:
        raise MatrixError(Codes.NOT_FOUND, "No location found for this alias")
    return json_response(found)


async def get_user_by_id(request: Request) -> Response:
    """GET /_matrix/client/v3/thirdparty/user"""
    hs = services_of(request, ThirdPartyServices)
    await require_user(request)
    user_id = request.query_params.get("userid")
    if user_id is None:
        raise MatrixError(Codes.MISSING_PARAM, "Missing query parameter: userid")
    found = await hs.appservices.reverse_lookup("user", "userid", user_id)
    if not found:
        raise MatrixError(Codes.NOT_FOUND, "No user found for this user ID")
    return json_response(found)


client_routes = [
    Route("/v3/thirdparty/protocols", get_protocols, methods=["GET"]),
    Route("/v3/thirdparty/protocol/{protocol}", get_protocol, methods=["GET"]),
    Route("/v3/thirdparty/location/{protocol}", get_location_by_protocol, methods=["GET"]),
    Route("/v3/thirdparty/user/{protocol}", get_user_by_protocol, methods=["GET"]),
    Route("/v3/thirdparty/location", get_location_by_alias, methods=["GET"]),
    Route("/v3/thirdparty/user", get_user_by_id, methods=["GET"]),
]
