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
from homeserver.storage.relations import (
    RelationStore,
)

if TYPE_CHECKING:
    from homeserver.rooms.service import RoomService

DEFAULT_RELATIONS_LIMIT = 50
MAX_RELATIONS_LIMIT = 100
DEFAULT_THREADS_LIMIT = 10
MAX_THREADS_LIMIT = 100
# spec, GET /relations `recurse`: "Homeservers SHOULD traverse at least 3 levels".
RECURSION_DEPTH = 3


def _token(position: int) -> str:
    """A pagination token, the same as /messages gives: the gap just after ``position``."""
    return f"s{position}"


def _position(token: str) -> int:
    # /messages `start`/`end` and /sync `next_batch` are accepted too (spec: `from`).
    # Relations and threads are kept in stream order: a topological token counts as the
    # stream position of its event (the same place unless events came late from elsewhere).
    return RoomPosition.parse(token).stream


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
        start = _position(from_token) if from_token is not None else None
        bound = _position(to_token) if to_token is not None else None
        # Users who left see the room as it was when they left.
        left_at = (
            membership.stream_ordering
            if membership is not None and membership.membership in ("leave", "ban")
            else None
        )
        if backwards:
            after, upto = bound, _min(start, left_at)
        else:
            after, upto = start, _min(bound, left_at)
        found = await self._relations.get_children(
            room_id,
            parent.event_id,
            rel_type=rel_type,
            event_type=event_type,
            after=after,
            upto=upto,
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
            last = page[-1].stream_ordering
            body["next_batch"] = _token(last - 1 if backwards else last)
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
        before = _position(from_token) if from_token is not None else None
        left_at = (
            membership.stream_ordering
            if membership is not None and membership.membership in ("leave", "ban")
            else None
        )
        roots = await self._relations.get_thread_roots(
            room_id,
            user_id=requester.user_id,
            participated_only=participated_only,
            before=before,
            visible_upto=left_at,
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
            body["next_batch"] = _token(page[-1].latest_stream_ordering - 1)
        return body


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
