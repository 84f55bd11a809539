"""Bundled aggregations (``unsigned.m.relations``) and the checks made before sending a
relation.

Spec: "Aggregations of child events", and the modules on event replacements (edits),
annotations (reactions), threads and references.
"""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.serialize import client_event
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

    def __init__(
        self, relations: RelationStore, events: EventStore, clock: Clock, ignored: IgnoredUsers
    ) -> None:
        self._relations = relations
        self._events = events
        self._clock = clock
        # Children sent by users the requester ignores are left out of aggregations.
        self._ignored = ignored

    async def check_new_relation(
        self, sender: str, room_id: RoomID, event_type: str, content: JsonDict
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
        ignored = await self._ignored.ignored_users(requester.user_id)
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
