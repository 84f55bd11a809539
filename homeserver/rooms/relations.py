"""Relations between events: checks on sending, bundled aggregations, /relations and /threads.

Spec: "Forming relationships between events", "Aggregations of child events", and the
modules on event replacements (edits), annotations (reactions), threads and references.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.serialize import client_event
from homeserver.rooms.visibility import Visibility
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.relations import (
    ANNOTATION,
    REPLACE,
    THREAD,
    Child,
    RelationStore,
    parse_relation,
)
from homeserver.sync.sources import IgnoredUsers

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
    return StreamToken.parse(token).get(Stream.EVENTS)


def _rel_type_of(event: StoredEvent) -> str | None:
    relates_to = event.content.get("m.relates_to")
    rel_type = relates_to.get("rel_type") if isinstance(relates_to, dict) else None
    return rel_type if isinstance(rel_type, str) else None


def _latest_edit(parent: StoredEvent, edits: Sequence[Child]) -> Child | None:
    """The most recent valid replacement (spec: "Server-side aggregation of m.replace").

    Valid: same sender and type as the original, which is neither a state event nor an edit
    itself, nor redacted. Most recent: by `origin_server_ts`, then the largest event ID.
    """
    if parent.redacted_by is not None or parent.is_state or _rel_type_of(parent) == REPLACE:
        return None
    valid = [c for c in edits if c.sender == parent.sender and c.type == parent.type]
    return max(valid, key=lambda c: (c.origin_server_ts, c.event_id)) if valid else None


class Aggregations:
    """Bundled aggregations (``unsigned.m.relations``) and the checks made before sending."""

    def __init__(self, relations: RelationStore, events: EventStore, clock: Clock) -> None:
        self._relations = relations
        self._events = events
        self._clock = clock
        self._ignored: IgnoredUsers | None = None

    def set_ignored_users(self, ignored: IgnoredUsers) -> None:
        """Children sent by users the requester ignores are left out of aggregations."""
        self._ignored = ignored

    async def check_new_relation(
        self, sender: str, room_id: str, event_type: str, content: JsonDict
    ) -> None:
        """Refuse what the spec says a server should refuse from its own clients."""
        relation = parse_relation(content)
        if relation is None:
            return
        if relation.rel_type == ANNOTATION and relation.key is not None:
            # spec, "Avoiding duplicate annotations" (a redacted one no longer counts).
            if await self._relations.has_annotation(
                relation.parent_id, sender, event_type, relation.key
            ):
                raise MatrixError(
                    Codes.DUPLICATE_ANNOTATION, "You already sent this annotation for this event"
                )
        elif relation.rel_type == THREAD:
            # spec, "Validation of m.thread relationships": no thread off a related event.
            parent = await self._events.get_event(relation.parent_id)
            if (
                parent is not None
                and parent.room_id == room_id
                and _rel_type_of(parent) is not None
            ):
                raise MatrixError(
                    Codes.UNKNOWN,
                    "Cannot start a thread from an event that has a relation itself",
                    status=400,
                )

    async def bundle(
        self,
        requester: Requester,
        events: Sequence[StoredEvent],
        room_version: str,
        *,
        with_room_id: bool,
    ) -> dict[str, JsonDict]:
        """event_id -> ``m.relations`` for the events that have any; state events get none."""
        by_room: dict[str, list[StoredEvent]] = {}
        for event in events:
            if not event.is_state:
                by_room.setdefault(event.room_id, []).append(event)
        if not by_room:
            return {}
        ignored = (
            await self._ignored.ignored_users(requester.user_id) if self._ignored else frozenset()
        )
        out: dict[str, JsonDict] = {}
        for room_id, parents in by_room.items():
            out.update(
                await self._bundle_room(
                    requester, room_id, parents, room_version, ignored, with_room_id, nested=True
                )
            )
        return out

    async def _bundle_room(
        self,
        requester: Requester,
        room_id: str,
        parents: Sequence[StoredEvent],
        room_version: str,
        ignored: frozenset[str],
        with_room_id: bool,
        *,
        nested: bool,
    ) -> dict[str, JsonDict]:
        children = await self._relations.get_children_of(
            room_id, [e.event_id for e in parents], requester.user_id, ignored=ignored
        )
        edits = {
            p.event_id: edit
            for p in parents
            if (edit := _latest_edit(p, children.edits.get(p.event_id, ()))) is not None
        }
        wanted = [e.event_id for e in edits.values()]
        wanted += [t.latest_event_id for t in children.threads.values()]
        loaded = await self._events.get_events(wanted) if wanted else {}
        # The latest event of a thread carries its own aggregations (an edit of it, most
        # likely); thread events cannot be thread roots, so one more level is the end.
        latest = [
            loaded[t.latest_event_id]
            for t in children.threads.values()
            if t.latest_event_id in loaded
        ]
        inner = (
            await self._bundle_room(
                requester, room_id, latest, room_version, ignored, with_room_id, nested=False
            )
            if nested and latest
            else {}
        )
        now = self._clock.now_ms()

        def serialize(event: StoredEvent) -> JsonDict:
            return client_event(
                event, now, room_version, requester=requester, with_room_id=with_room_id
            )

        out: dict[str, JsonDict] = {}
        for parent in parents:
            relations: JsonDict = {}
            edit = edits.get(parent.event_id)
            if edit is not None and edit.event_id in loaded:
                relations["m.replace"] = serialize(loaded[edit.event_id])
            thread = children.threads.get(parent.event_id)
            if thread is not None and thread.latest_event_id in loaded:
                latest_event = serialize(loaded[thread.latest_event_id])
                if thread.latest_event_id in inner:
                    latest_event["unsigned"]["m.relations"] = inner[thread.latest_event_id]
                relations["m.thread"] = {
                    "latest_event": latest_event,
                    "count": thread.count,
                    "current_user_participated": thread.participated
                    or parent.sender == requester.user_id,
                }
            references = children.references.get(parent.event_id)
            if references:
                relations["m.reference"] = {"chunk": [{"event_id": i} for i in references]}
            if relations:
                out[parent.event_id] = relations
        return out


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
        room_id: str,
        event_id: str,
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
        room_id: str,
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
