"""Relations between events: /relations and /threads (bundled aggregations and the checks on
sending are in ``aggregations``).

Spec: "Forming relationships between events", "Aggregations of child events", and the
modules on event replacements (edits), annotations (reactions), threads and references.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID
from homeserver.core.streams import RoomPosition
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.visibility import Visibility
from homeserver.storage.events import EventStore
from homeserver.storage.relations import RelationStore, TimelineBounds

if TYPE_CHECKING:
    from homeserver.rooms.service import RoomService

DEFAULT_RELATIONS_LIMIT = 50
MAX_RELATIONS_LIMIT = 100
DEFAULT_THREADS_LIMIT = 10
MAX_THREADS_LIMIT = 100
# spec, GET /relations `recurse`: "Homeservers SHOULD traverse at least 3 levels".
RECURSION_DEPTH = 3


def _after(depth: int, stream: int, cap: int | None) -> str:
    """The token just after the event at ``(depth, stream)``, as /messages gives."""
    return RoomPosition(depth, stream, cap).serialize()


def _before(depth: int, stream: int, cap: int | None) -> str:
    """The token just before it: backwards from there come the events before it."""
    return RoomPosition(depth, stream - 1, cap).serialize()


def _bounds(
    start: RoomPosition | None, to: RoomPosition | None, backwards: bool, left_at: int | None
) -> TimelineBounds:
    """A page of relations between two tokens of the room's timeline, read as /messages
    reads them (``RoomPosition``: a topological token is a place in topological order, a
    stream token the timeline as it was at that stream position). ``left_at``: the user
    left there, and sees nothing after."""
    if backwards:
        return TimelineBounds(
            below=start.topological if start else None,
            above=to.topological if to else None,
            after=to.stream if to is not None and to.depth is None else None,
            upto=_min(start.cap if start else None, left_at),
        )
    return TimelineBounds(
        below=to.topological if to else None,
        above=start.topological if start else None,
        # Forwards from the room's start (stream position 0), backfilled history comes too.
        after=start.stream
        if start is not None and start.depth is None and start.stream > 0
        else None,
        upto=_min(to.stream if to is not None and to.depth is None else None, left_at),
    )


class RelationsService:
    """``GET /relations/{eventId}[/{relType}[/{eventType}]]`` and ``GET /threads``."""

    def __init__(
        self,
        relations: RelationStore,
        events: EventStore,
        rooms: RoomService,
        visibility: Visibility,
    ) -> None:
        self._relations = relations
        self._events = events
        self._rooms = rooms
        self._visibility = visibility

    async def relations(
        self,
        requester: Requester,
        room_id: RoomID,
        event_id: EventID,
        *,
        rel_type: str | None,
        event_type: str | None,
        from_token: str | None,
        to_token: str | None,
        backwards: bool,
        limit: int | None,
        recurse: bool | None,
    ) -> JsonDict:
        try:
            room, membership, parent = await self._rooms.visible_event(requester, room_id, event_id)
        except MatrixError as e:
            # spec: 404 also when "the user does not have permission to read this event";
            # the endpoint documents no 403, and an outsider learns nothing either way.
            if e.code != Codes.FORBIDDEN:
                raise
            raise MatrixError(Codes.NOT_FOUND, "Event not found") from None
        limit = DEFAULT_RELATIONS_LIMIT if limit is None else min(limit, MAX_RELATIONS_LIMIT)
        # spec: `from` and `to` are tokens of /messages or /sync (in the room's topological
        # order, as Synapse pages relations); a malformed one is 400 M_INVALID_PARAM.
        start = RoomPosition.parse(from_token) if from_token is not None else None
        to = RoomPosition.parse(to_token) if to_token is not None else None
        # Users who left see the room as it was when they left.
        left_at = (
            membership.stream_ordering
            if membership is not None and membership.membership in ("leave", "ban")
            else None
        )
        found = await self._relations.get_children(
            room_id,
            parent.event_id,
            rel_type=rel_type,
            event_type=event_type,
            bounds=_bounds(start, to, backwards, left_at),
            backwards=backwards,
            limit=limit + 1,
            depth=RECURSION_DEPTH if recurse else 1,
        )
        page = found[:limit]
        loaded = await self._events.get_events(c.event_id for c in page) if page else {}
        visible = await self._visibility.filter_events(
            requester.user_id, [loaded[c.event_id] for c in page if c.event_id in loaded]
        )
        body: JsonDict = {
            "chunk": await self._rooms.serialize(requester, visible, room.room_version)
        }
        if len(found) > limit and page:
            last = page[-1]
            body["next_batch"] = (
                _before(last.depth, last.stream_ordering, start.cap if start else None)
                if backwards
                else _after(last.depth, last.stream_ordering, None)
            )
        if from_token is not None:
            body["prev_batch"] = from_token
        if recurse is not None:
            body["recursion_depth"] = RECURSION_DEPTH if recurse else 1
        return body

    async def threads(
        self,
        requester: Requester,
        room_id: RoomID,
        *,
        participated_only: bool,
        from_token: str | None,
        limit: int | None,
    ) -> JsonDict:
        room, membership = await self._rooms.access(requester, room_id)
        limit = DEFAULT_THREADS_LIMIT if limit is None else min(limit, MAX_THREADS_LIMIT)
        # The list goes back in topological order of each thread's latest event (as
        # Synapse); a stream token (what this endpoint gave before) still bounds the latest
        # event's stream position.
        start = RoomPosition.parse(from_token) if from_token is not None else None
        left_at = (
            membership.stream_ordering
            if membership is not None and membership.membership in ("leave", "ban")
            else None
        )
        roots = await self._relations.get_thread_roots(
            room_id,
            user_id=requester.user_id,
            participated_only=participated_only,
            below=start.topological if start else None,
            latest_upto=start.stream if start is not None and start.depth is None else None,
            upto=left_at,
            limit=limit + 1,
        )
        page = roots[:limit]
        loaded = await self._events.get_events(r.root_id for r in page) if page else {}
        visible = await self._visibility.filter_events(
            requester.user_id, [loaded[r.root_id] for r in page if r.root_id in loaded]
        )
        body: JsonDict = {
            "chunk": await self._rooms.serialize(requester, visible, room.room_version)
        }
        if len(roots) > limit and page:
            last = page[-1]
            body["next_batch"] = _before(last.latest_depth, last.latest_stream_ordering, None)
        return body


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
