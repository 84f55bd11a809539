"""The user directory (spec: POST /user_directory/search)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.accounts.user_directory import DEFAULT_LIMIT, UserDirectoryService
from homeserver.core.types import JsonDict
from homeserver.web.edge import RequestBody, json_response, parse_body, require_user, services_of


@dataclass(frozen=True, slots=True)
class UserDirectoryServices:
    """What the routes of the user directory call (built by the composition root)."""

    user_directory: UserDirectoryService


class SearchBody(RequestBody):
    search_term: str
    limit: int = Field(default=DEFAULT_LIMIT, ge=0)


async def post_user_directory_search(request: Request) -> Response:
    """POST /_matrix/client/v3/user_directory/search"""
    hs = services_of(request, UserDirectoryServices)
    requester = await require_user(request)
    body = await parse_body(request, SearchBody)
    found = await hs.user_directory.search(requester, body.search_term, body.limit)
    results: list[JsonDict] = []
    for user in found.results:
        entry: JsonDict = {"user_id": user.user_id}
        if user.display_name is not None:
            entry["display_name"] = user.display_name
        if user.avatar_url is not None:
            entry["avatar_url"] = user.avatar_url
        results.append(entry)
    return json_response({"results": results, "limited": found.limited})


client_routes = [
    Route("/v3/user_directory/search", post_user_directory_search, methods=["POST"]),
]
