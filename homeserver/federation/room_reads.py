"""What other servers read of our rooms: an event, the state at an event (whole or as IDs),
an event's auth chain, backfill and missing events (server-server API, "Retrieving events",
"Backfilling and retrieving missing events").

Every read is refused to a server the room's ACL denies and to one with no user joined to
the room (403 M_FORBIDDEN); events are served as history visibility allows servers to see
them: ``world_readable`` and ``shared`` history to any server in the room, ``invited`` and
``joined`` history only to a server that had a member invited or joined at the event.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict
from homeserver.events.format import redact
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.federation.acl import RoomAcls
from homeserver.storage.events import EventStore, StateMap, StoredEvent
from homeserver.storage.events.federation_reads import FederationReads
from homeserver.storage.rooms import RoomStore

HISTORY_VISIBILITY = "m.room.history_visibility"
# Bounds on what one request walks: Synapse answers at most this many too.
MAX_BACKFILL = 100
MAX_MISSING_EVENTS = 20
# Event IDs a request may name (backfill's `v`, get_missing_events' lists).
MAX_REQUEST_EVENT_IDS = 100


@dataclass(frozen=True, slots=True)
class StateAt:
    """The room's state before an event, and the auth chain of that state (PDUs)."""

    state: list[JsonDict]
    auth_chain: list[JsonDict]


@dataclass(frozen=True, slots=True)
class StateIdsAt:
    pdu_ids: list[str]
    auth_chain_ids: list[str]


class RoomReads:
    def __init__(
        self,
        events: EventStore,
        rooms: RoomStore,
        reads: FederationReads,
        acls: RoomAcls,
    ) -> None:
        self._events = events
        self._rooms = rooms
        self._reads = reads
        self._acls = acls

    # --- the checks every read makes -------------------------------------------------------

    async def check_server_in_room(self, room_id: str, origin: str) -> RoomVersion:
        """The room's version, once the origin may read it: 404 for an unknown room, 403 when
        its ACL denies the origin or none of the origin's users is joined."""
        version = await self._rooms.get_room_version(room_id)
        if version is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")
        await self._acls.check(room_id, origin)
        if not await self._reads.server_has_joined_member(room_id, origin):
            raise MatrixError(Codes.FORBIDDEN, "Your server has no user in this room")
        return KNOWN_ROOM_VERSIONS[version]

    async def _event_in_room(self, room_id: str, event_id: str) -> StoredEvent:
        event = await self._events.get_event(event_id)
        if event is None or event.room_id != room_id:
            raise MatrixError(Codes.NOT_FOUND, "Unknown event in this room")
        return event

    # --- reads -----------------------------------------------------------------------------

    async def get_event(self, origin: str, event_id: str) -> JsonDict:
        """GET /event/{eventId}: the PDU, if the origin may see it."""
        event = await self._events.get_event(event_id)
        if event is None or await self._events.get_rejection(event_id) is not None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown event")
        version = await self.check_server_in_room(event.room_id, origin)
        if not await self._visible(origin, [event]):
            raise MatrixError(Codes.FORBIDDEN, "Your server may not see this event")
        return as_pdu(event, version)

    async def get_state(self, origin: str, room_id: str, event_id: str) -> StateAt:
        """GET /state/{roomId}: the state before the event and its auth chain."""
        version = await self.check_server_in_room(room_id, origin)
        state = await self._state_before(await self._event_in_room(room_id, event_id))
        ids = sorted(state.values())
        chain_ids = await self._events.get_auth_chain(ids)
        loaded = await self._events.get_events([*ids, *chain_ids])
        return StateAt(
            [as_pdu(loaded[i], version) for i in ids if i in loaded],
            [as_pdu(loaded[i], version) for i in sorted(chain_ids) if i in loaded],
        )

    async def get_state_ids(self, origin: str, room_id: str, event_id: str) -> StateIdsAt:
        """GET /state_ids/{roomId}: the same, as event IDs (read from the state groups, no
        event loaded)."""
        await self.check_server_in_room(room_id, origin)
        state = await self._state_before(await self._event_in_room(room_id, event_id))
        ids = sorted(state.values())
        return StateIdsAt(ids, sorted(await self._events.get_auth_chain(ids)))

    async def get_event_auth(self, origin: str, room_id: str, event_id: str) -> list[JsonDict]:
        """GET /event_auth/{roomId}/{eventId}: the event's auth chain."""
        version = await self.check_server_in_room(room_id, origin)
        await self._event_in_room(room_id, event_id)
        chain = await self._events.get_auth_chain([event_id])
        loaded = await self._events.get_events(chain)
        return [as_pdu(loaded[i], version) for i in sorted(chain) if i in loaded]

    async def backfill(
        self, origin: str, room_id: str, event_ids: Sequence[str], limit: int
    ) -> list[JsonDict]:
        """GET /backfill/{roomId}: the given events and those before them, deepest first,
        up to ``limit``, as history visibility lets the origin see them."""
        version = await self.check_server_in_room(room_id, origin)
        _check_ids(event_ids)
        limit = max(0, min(limit, MAX_BACKFILL))
        starts = await self._events.get_events(event_ids)
        found: dict[str, StoredEvent] = {}
        # A walk by depth, deepest first (the newest history first, as the spec's backfill
        # goes back in time): a heap of (-depth, event ID).
        queue = [(-e.depth, e.event_id) for e in starts.values() if e.room_id == room_id]
        heapq.heapify(queue)
        loaded: dict[str, StoredEvent] = dict(starts)
        while queue and len(found) < limit:
            _, event_id = heapq.heappop(queue)
            if event_id in found:
                continue
            event = loaded[event_id]
            found[event_id] = event
            prevs = (await self._reads.get_prev_edges([event_id])).get(event_id, [])
            fresh = [p for p in prevs if p not in loaded]
            loaded.update(await self._events.get_events(fresh))
            for p in prevs:
                if p in loaded and p not in found and loaded[p].room_id == room_id:
                    heapq.heappush(queue, (-loaded[p].depth, p))
        walked = [e for e in found.values() if e.served]
        return [as_pdu(e, version) for e in await self._visible_only(origin, walked)]

    async def get_missing_events(
        self,
        origin: str,
        room_id: str,
        earliest: Sequence[str],
        latest: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> list[JsonDict]:
        """POST /get_missing_events/{roomId}: the events before ``latest`` (not themselves),
        back to ``earliest`` (not themselves) and ``min_depth``, at most ``limit``, oldest
        first."""
        version = await self.check_server_in_room(room_id, origin)
        _check_ids(earliest)
        _check_ids(latest)
        limit = max(0, min(limit, MAX_MISSING_EVENTS))
        seen = set(earliest) | set(latest)
        frontier = list(latest)
        found: dict[str, StoredEvent] = {}
        while frontier and len(found) < limit:
            edges = await self._reads.get_prev_edges(frontier)
            prevs = [p for e in frontier for p in edges.get(e, []) if p not in seen]
            prevs = list(dict.fromkeys(prevs))
            seen.update(prevs)
            loaded = await self._events.get_events(prevs)
            frontier = []
            # Deepest first, so that a limit keeps the events next to ``latest``.
            for event in sorted(loaded.values(), key=lambda e: -e.depth):
                if event.room_id != room_id or event.depth < min_depth:
                    continue
                if len(found) >= limit:
                    break
                found[event.event_id] = event
                frontier.append(event.event_id)
        events = sorted(
            (e for e in found.values() if e.served), key=lambda e: (e.depth, e.stream_ordering)
        )
        return [as_pdu(e, version) for e in await self._visible_only(origin, events)]

    # --- helpers ---------------------------------------------------------------------------

    async def _state_before(self, event: StoredEvent) -> StateMap:
        if event.state_group == 0:  # an outlier: known without its place in the graph
            raise MatrixError(Codes.NOT_FOUND, "No state is known at this event")
        return await self._events.get_state_before(event)

    async def _visible_only(self, origin: str, events: list[StoredEvent]) -> list[StoredEvent]:
        cache: dict[int, StateMap] = {}
        return [e for e in events if await self._visible(origin, [e], cache)]

    async def _visible(
        self, origin: str, events: Iterable[StoredEvent], cache: dict[int, StateMap] | None = None
    ) -> bool:
        """Whether the origin may see every one of ``events`` (server-server API, history
        visibility for servers)."""
        cache = {} if cache is None else cache
        suffix = ":" + origin
        for event in events:
            if event.type == "m.room.member" and (event.state_key or "").endswith(suffix):
                continue  # a server sees the memberships of its own users, as users do
            state = await self._state_at(event, cache)
            hv_id = state.get((HISTORY_VISIBILITY, ""))
            hv = "shared"
            if hv_id is not None:
                hv_event = await self._events.get_event(hv_id)
                value = hv_event.content.get("history_visibility") if hv_event else None
                hv = value if isinstance(value, str) else "shared"
            if hv in ("world_readable", "shared"):
                continue
            member_ids = [
                e for (t, k), e in state.items() if t == "m.room.member" and k.endswith(suffix)
            ]
            members = await self._events.get_events(member_ids)
            memberships = {m.content.get("membership") for m in members.values()}
            if "join" in memberships or (hv == "invited" and "invite" in memberships):
                continue
            return False
        return True

    async def _state_at(self, event: StoredEvent, cache: dict[int, StateMap]) -> StateMap:
        # A state event is judged by the state before it, like Visibility does for users.
        if event.state_key is None:
            if event.state_group not in cache:
                cache[event.state_group] = await self._events.get_state_ids(event.state_group)
            return cache[event.state_group]
        return await self._events.get_state_before(event)


def as_pdu(event: StoredEvent, version: RoomVersion) -> JsonDict:
    """An event as other servers must have it: redacted once redacted."""
    return event.pdu if event.redacted_by is None else redact(event.pdu, version)


def _check_ids(event_ids: Sequence[str]) -> None:
    if len(event_ids) > MAX_REQUEST_EVENT_IDS:
        raise MatrixError(
            Codes.BAD_JSON, f"At most {MAX_REQUEST_EVENT_IDS} event IDs in one request"
        )
