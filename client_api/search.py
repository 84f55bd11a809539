"""Server-side search (spec: "Server Side Search", POST /search)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeserver.core.errors import Codes, MatrixError
from homeserver.filters.matching import EventFilter
from homeserver.filters.service import RoomEventFilter
from homeserver.search.service import (
    DEFAULT_CONTEXT,
    MAX_CONTEXT,
    EventContext,
    RoomEventsSearch,
    SearchService,
)
from homeserver.storage.search import SEARCH_KEYS
from homeserver.web.edge import (
    RequestBody,
    items_response,
    read_json_object,
    require_user,
    services_of,
    validate_body,
)


@dataclass(frozen=True, slots=True)
class SearchServices:
    """What the search route calls (built by the composition root)."""

    search: SearchService


class EventContextBody(RequestBody):
    before_limit: int = Field(default=DEFAULT_CONTEXT, ge=0, le=MAX_CONTEXT)
    after_limit: int = Field(default=DEFAULT_CONTEXT, ge=0, le=MAX_CONTEXT)
    include_profile: bool = False


class GroupBody(RequestBody):
    key: Literal["room_id", "sender"]


class GroupingsBody(RequestBody):
    group_by: list[GroupBody] = Field(default_factory=list)


class RoomEventsBody(RequestBody):
    search_term: str = Field(max_length=1000)
    keys: list[Literal["content.body", "content.name", "content.topic"]] | None = None
    filter: RoomEventFilter | None = None
    order_by: Literal["rank", "recent"] = "rank"
    event_context: EventContextBody | None = None
    include_state: bool = False
    groupings: GroupingsBody | None = None


class CategoriesBody(RequestBody):
    room_events: RoomEventsBody | None = None


class SearchBody(RequestBody):
    search_categories: CategoriesBody


_CATEGORIES = frozenset(CategoriesBody.model_fields)


def _criteria(body: RoomEventsBody, raw_filter: Any) -> RoomEventsSearch:
    context = body.event_context
    return RoomEventsSearch(
        search_term=body.search_term,
        keys=tuple(body.keys) if body.keys else tuple(SEARCH_KEYS),
        filter=EventFilter.from_json(raw_filter),
        order_by=body.order_by,
        event_context=EventContext(
            context.before_limit, context.after_limit, context.include_profile
        )
        if context is not None
        else None,
        include_state=body.include_state,
        group_by=tuple(dict.fromkeys(g.key for g in body.groupings.group_by))
        if body.groupings is not None
        else (),
    )


async def search(request: Request) -> Response:
    """POST /_matrix/client/v3/search"""
    hs = services_of(request, SearchServices)
    requester = await require_user(request)
    raw = await read_json_object(request)
    body = validate_body(raw, SearchBody)
    categories = raw["search_categories"]
    unknown = sorted(set(categories) - _CATEGORIES)
    if unknown:
        # Only room events are searchable (the spec's one category): asking for anything
        # else is an error, not an empty answer the client would take for "no results".
        raise MatrixError(Codes.INVALID_PARAM, f"Unknown search category: {unknown[0]}")
    room_events = body.search_categories.room_events
    result: dict[str, Any] = {}
    if room_events is not None:
        criteria = _criteria(room_events, categories["room_events"].get("filter"))
        result["room_events"] = await hs.search.search_room_events(
            requester, criteria, request.query_params.get("next_batch")
        )
    return items_response({"search_categories": result}, "search")


client_routes = [Route("/v3/search", search, methods=["POST"])]
