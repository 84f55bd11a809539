"""Server-side search (spec: POST /search, the ``room_events`` category).

The index (``storage/search.py``) finds candidate events in the rooms the user is joined
to; each is then judged as ``/messages`` would judge it: history visibility at the event
(``rooms/visibility.py``), the user's ignore list, the request's filter. Redacted events are
not in the index. Encrypted events have no searchable content, so encrypted rooms find
nothing, as the spec expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID
from homeserver.core.types import JsonDict, Requester
from homeserver.filters.matching import EventFilter
from homeserver.rooms.service import RoomService, event_token
from homeserver.rooms.visibility import Visibility
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.events.model import is_served_position
from homeserver.storage.rooms import RoomStore
from homeserver.storage.search import (
    SEARCH_KEYS,
    Order,
    SearchCriteria,
    SearchHit,
    SearchPosition,
    SearchStore,
    search_words,
)
from homeserver.sync.sources import IgnoredUsers

DEFAULT_LIMIT = 10
MAX_LIMIT = 100  # each result may carry its context: a page stays bounded
DEFAULT_CONTEXT = 5  # spec: before_limit and after_limit default to 5
MAX_CONTEXT = 100
# Hits read from the index for each page: more than a page, as some may be hidden; a page
# of a user who may see few of many hits ends early, with a next_batch to read on.
_READ_FACTOR = 2
_MAX_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class EventContext:
    before_limit: int = DEFAULT_CONTEXT
    after_limit: int = DEFAULT_CONTEXT
    include_profile: bool = False


@dataclass(frozen=True, slots=True)
class RoomEventsSearch:
    """The ``room_events`` criteria of a request, validated by the route."""

    search_term: str
    keys: Sequence[str] = tuple(SEARCH_KEYS)
    filter: EventFilter = field(default_factory=EventFilter)
    order_by: Order = "rank"
    event_context: EventContext | None = None
    include_state: bool = False
    group_by: Sequence[str] = ()


def batch_token(order: Order, hit: SearchHit) -> str:
    """A ``next_batch``: the order it belongs to and the last hit's place in it (in the
    recent order, a backfilled hit's timestamp and depth too: see ``SearchStore.search``)."""
    if order == "rank":
        return f"r{hit.stream_ordering}_{hit.rank!r}"
    if hit.stream_ordering > 0:
        return f"t{hit.stream_ordering}"
    return f"t{hit.stream_ordering}_{hit.origin_server_ts}_{hit.depth}"


def _integer(text: str) -> int | None:
    """A 64-bit integer in decimal, with a sign when negative (positions of backfilled
    events are); None for anything else."""
    digits = text[1:] if text.startswith("-") else text
    if not digits.isdigit() or len(digits) > 19:
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def parse_batch(order: Order, token: str) -> SearchPosition:
    """The place a ``next_batch`` names; M_INVALID_PARAM for anything else, including a
    token of the other order."""
    bad = MatrixError(Codes.INVALID_PARAM, "Invalid next_batch")
    kind, rest = token[:1], token[1:]
    if kind != ("r" if order == "rank" else "t"):
        raise bad
    text, _, extra = rest.partition("_")
    position = _integer(text)
    if position is None or not is_served_position(position):
        raise bad
    if kind == "t":
        if position > 0 and extra == "":
            return SearchPosition(position)
        ts_text, _, depth_text = extra.partition("_")
        ts, depth = _integer(ts_text), _integer(depth_text)
        if position > 0 or ts is None or depth is None or ts < 0 or depth < 0:
            raise bad
        return SearchPosition(position, origin_server_ts=ts, depth=depth)
    try:
        value = float(extra)
    except ValueError:
        raise bad from None
    if not math.isfinite(value):
        raise bad
    return SearchPosition(position, value)


class SearchService:
    def __init__(
        self,
        store: SearchStore,
        events: EventStore,
        rooms: RoomStore,
        room_reads: RoomService,
        visibility: Visibility,
        ignored: IgnoredUsers,
    ) -> None:
        self._store = store
        self._events = events
        self._rooms = rooms
        self._room_reads = room_reads
        self._visibility = visibility
        self._ignored = ignored

    async def search_room_events(
        self, requester: Requester, search: RoomEventsSearch, next_batch: str | None
    ) -> JsonDict:
        """The ``room_events`` result: results, count, highlights, and what was asked."""
        order = search.order_by
        after = parse_batch(order, next_batch) if next_batch is not None else None
        event_filter = search.filter
        limit = min(event_filter.limit or DEFAULT_LIMIT, MAX_LIMIT)
        words = search_words(search.search_term)
        joined = await self._rooms.get_user_memberships(requester.user_id, ("join",))
        room_ids = sorted(m.room_id for m in joined if event_filter.allows_room(m.room_id))
        types = [t for k, t in SEARCH_KEYS.items() if k in search.keys]
        types = [t for t in types if event_filter.allows_type(t)]
        empty: JsonDict = {"results": [], "count": 0, "highlights": words}
        if not words or not room_ids or not types:
            return empty
        criteria = SearchCriteria(
            words,
            room_ids,
            types,
            senders=event_filter.senders,
            not_senders=event_filter.not_senders,
        )
        found, last = await self._page(requester, criteria, event_filter, order, after, limit)
        out: JsonDict = {
            "count": await self._store.count(criteria),
            "highlights": words,
        }
        out["results"] = await self._results(requester, found, search.event_context)
        token = batch_token(order, last) if last is not None else None
        if token is not None:
            out["next_batch"] = token
        if search.include_state:
            out["state"] = await self._state_of(requester, found)
        if search.group_by:
            out["groups"] = _groups(found, search.group_by, token)
        return out

    async def _page(
        self,
        requester: Requester,
        criteria: SearchCriteria,
        event_filter: EventFilter,
        order: Order,
        after: SearchPosition | None,
        limit: int,
    ) -> tuple[list[tuple[SearchHit, StoredEvent]], SearchHit | None]:
        """A page of hits the user may see, and the hit to read on after (None: the end)."""
        ignored = await self._ignored.ignored_users(requester.user_id)
        found: list[tuple[SearchHit, StoredEvent]] = []
        batch = limit * _READ_FACTOR
        for _ in range(_MAX_ROUNDS):
            hits = await self._store.search(criteria, order, after, batch)
            loaded = await self._events.get_events(h.event_id for h in hits)
            candidates = [
                loaded[h.event_id]
                for h in hits
                if h.event_id in loaded
                and loaded[h.event_id].sender not in ignored
                and event_filter.allows(loaded[h.event_id])
            ]
            visible = {
                e.event_id
                for e in await self._visibility.filter_events(requester.user_id, candidates)
            }
            for hit in hits:
                after = SearchPosition(
                    hit.stream_ordering, hit.rank, hit.origin_server_ts, hit.depth
                )
                if hit.event_id in visible:
                    found.append((hit, loaded[hit.event_id]))
                    if len(found) == limit:
                        return found, hit
            if len(hits) < batch:
                return found, None
        # Many hits the user may not see: this page ends here, the next one reads on.
        return found, hits[-1]

    async def _results(
        self,
        requester: Requester,
        found: list[tuple[SearchHit, StoredEvent]],
        context: EventContext | None,
    ) -> list[JsonDict]:
        versions: dict[str, str] = {}
        results = []
        for hit, event in found:
            if event.room_id not in versions:
                versions[event.room_id] = await self._room_reads.room_version(RoomID(event.room_id))
            version = versions[event.room_id]
            [serialized] = await self._room_reads.serialize(requester, [event], version)
            result: JsonDict = {"rank": hit.rank, "result": serialized}
            if context is not None:
                result["context"] = await self._context(requester, event, version, context)
            results.append(result)
        return results

    async def _context(
        self, requester: Requester, event: StoredEvent, version: str, context: EventContext
    ) -> JsonDict:
        """The events around a result, as ``/context`` gives them (spec: ``event_context``)."""
        user_id = requester.user_id
        before: list[StoredEvent] = []
        after: list[StoredEvent] = []
        # In the room's order, as /context: backfilled history has positions below the
        # events stream, so the stream order would not find an event's neighbours.
        if context.before_limit:
            before = await self._events.get_timeline(
                event.room_id,
                below=(event.depth, event.stream_ordering - 1),
                limit=context.before_limit,
                descending=True,
            )
            before = await self._visibility.filter_events(user_id, before)
        if context.after_limit:
            after = await self._events.get_timeline(
                event.room_id,
                above=(event.depth, event.stream_ordering),
                limit=context.after_limit,
                descending=False,
            )
            after = await self._visibility.filter_events(user_id, after)
        start = event_token(before[-1] if before else event, before=True)
        end = event_token(after[-1] if after else event)
        out: JsonDict = {
            "events_before": await self._room_reads.serialize(requester, before, version),
            "events_after": await self._room_reads.serialize(requester, after, version),
            "start": start,
            "end": end,
        }
        if context.include_profile:
            out["profile_info"] = await self._profiles(event, before, after)
        return out

    async def _profiles(
        self, event: StoredEvent, before: list[StoredEvent], after: list[StoredEvent]
    ) -> JsonDict:
        """Each sender's profile as the room knew it at the result (spec: "historic")."""
        senders = {e.sender for e in (*before, event, *after)}
        state = await self._events.get_state_ids(event.state_group)
        member_ids = [i for (t, k), i in state.items() if t == "m.room.member" and k in senders]
        profiles: JsonDict = {}
        for member in (await self._events.get_events(member_ids)).values():
            if member.state_key is None or member.content.get("membership") != "join":
                continue
            profile = {
                k: v
                for k in ("displayname", "avatar_url")
                if isinstance(v := member.content.get(k), str)
            }
            profiles[member.state_key] = profile
        return profiles

    async def _state_of(
        self, requester: Requester, found: list[tuple[SearchHit, StoredEvent]]
    ) -> JsonDict:
        """The current state of each room with a result (the user is joined to each)."""
        state: JsonDict = {}
        for _, event in found:
            if event.room_id in state:
                continue
            events = await self._events.get_current_state_events(event.room_id)
            version = await self._room_reads.room_version(RoomID(event.room_id))
            state[event.room_id] = await self._room_reads.serialize(
                requester, events, version, may_have_children=False
            )
        return state


def _groups(
    found: list[tuple[SearchHit, StoredEvent]], group_by: Sequence[str], token: str | None
) -> JsonDict:
    """The page's results partitioned by room or sender, each group ordered by the first
    result in it; a group's next_batch reads on the whole search, as its results come from
    it."""
    groups: JsonDict = {}
    for key in group_by:
        by_value: dict[str, JsonDict] = {}
        for _, event in found:
            value = event.room_id if key == "room_id" else event.sender
            group = by_value.setdefault(value, {"results": [], "order": len(by_value) + 1})
            group["results"].append(event.event_id)
        if token is not None:
            for group in by_value.values():
                group["next_batch"] = token
        groups[key] = by_value
    return groups
