"""The checks every event from another server passes, in the spec's order, before it is
persisted on the room graph (server-server API, "Checks performed on receipt of a PDU").

1. format and size, 2. signatures, 3. content hash: ``Validator`` (issue 17's event layer
   gives one; signatures need the federation key ring);
4. auth against its own ``auth_events``: a rejected or failing event is stored as rejected;
5. auth against the state before it (its prev_events' states, resolved);
6. soft-fail against the room's current state;
then ``EventStore.persist_incoming``, and the notifier wakes the room.

Events whose prev_events or auth_events are unknown are not persisted here: fetching them
(and the state at a gap) is federation's, which calls this again with them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from homeserver.core.errors import MatrixError
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.events.auth import check_auth, check_auth_events_selection
from homeserver.events.format import check_event_size_and_shape, compute_event_id, redact
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.rooms.sender import StateResolver
from homeserver.storage.events import (
    EventStore,
    Extremity,
    IncomingEvent,
    StateKey,
    StateMap,
    StoredEvent,
    referenced_ids,
)
from homeserver.storage.rooms import RoomStore
from homeserver.wakeups.notifier import Notifier

logger = logging.getLogger(__name__)

CREATE = ("m.room.create", "")


class Validator(Protocol):
    """Steps 1 to 3: raises for a PDU to drop; returns it, or its redacted form when its
    content hash does not match."""

    def __call__(self, pdu: JsonDict, version: RoomVersion) -> JsonDict: ...


def check_shape_only(pdu: JsonDict, version: RoomVersion) -> JsonDict:
    """Step 1 alone, until signatures can be checked (federation's key ring)."""
    check_event_size_and_shape(pdu)
    return pdu


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SOFT_FAILED = "soft_failed"
    KNOWN = "known"  # persisted before: nothing done
    MISSING = "missing"  # prev_events or auth_events unknown: nothing done
    DROPPED = "dropped"  # failed steps 1 to 3: not stored


@dataclass(frozen=True, slots=True)
class Received:
    event_id: str
    outcome: Outcome
    reason: str | None = None


class IncomingEvents:
    def __init__(
        self,
        events: EventStore,
        rooms: RoomStore,
        notifier: Notifier,
        validate: Validator = check_shape_only,
        resolve: StateResolver | None = None,
    ) -> None:
        self._events = events
        self._rooms = rooms
        self._notifier = notifier
        self._validate = validate
        self._resolve = resolve

    async def receive(
        self, room_id: str, pdus: Sequence[JsonDict], received_ts: int
    ) -> list[Received]:
        """Check and persist PDUs of one room, parents before children, one at a time (each
        one's checks see the ones before it)."""
        room = await self._rooms.get_room(room_id)
        if room is None:
            raise LookupError(room_id)
        version = KNOWN_ROOM_VERSIONS[room.room_version]
        results = []
        for pdu in pdus:
            results.append(await self._receive_one(room_id, version, pdu, received_ts))
        return results

    async def _receive_one(
        self, room_id: str, version: RoomVersion, pdu: JsonDict, received_ts: int
    ) -> Received:
        try:
            event_id = compute_event_id(pdu, version)
            checked = self._validate(pdu, version)
        except (MatrixError, ValueError, TypeError) as e:
            logger.info("pdu dropped", extra={"room_id": room_id, "reason": str(e)})
            return Received("", Outcome.DROPPED, str(e))
        pdu = checked
        prevs = referenced_ids(pdu, "prev_events")
        auths = referenced_ids(pdu, "auth_events")
        problem = _graph_problem(pdu, event_id, room_id, prevs, auths)
        if problem is not None:
            return Received(event_id, Outcome.DROPPED, problem)
        if await self._events.get_event(event_id) is not None:
            return Received(event_id, Outcome.KNOWN)
        loaded = await self._events.get_events([*prevs, *auths])
        missing = [e for e in (*prevs, *auths) if e not in loaded]
        if missing or any(not loaded[p].served for p in prevs if p in loaded):
            return Received(event_id, Outcome.MISSING, f"unknown: {', '.join(missing)}")
        create = await self._events.get_current_state_event(room_id, *CREATE)
        create_pdu = create.pdu if create is not None else None

        # 4. Against its own auth_events; a rejected one rejects it (spec, "Rejected events").
        rejected = await self._events.get_rejections(auths)
        reason: str | None = None
        if rejected:
            reason = f"auth event {next(iter(rejected))} was rejected"
        else:
            reason = self._auth_failure(
                version, pdu, [self._as_seen(loaded[a], version) for a in auths], create_pdu
            )
        # 5. Against the state before it.
        states = [await self._events.get_state_ids(loaded[p].state_group) for p in prevs]
        state_before = await self._resolved(version, states)
        if reason is None:
            reason = await self._auth_failure_in(version, pdu, state_before, create_pdu)
        if reason is not None:
            await self._events.persist_incoming(
                room_id,
                [IncomingEvent(pdu, event_id, rejected=reason, state_before=state_before)],
                received_ts,
            )
            return Received(event_id, Outcome.REJECTED, reason)

        # 6. Against the room's current state: allowed in its branch, not any more now.
        current = await self._events.get_current_state_ids(room_id)
        soft = await self._auth_failure_in(version, pdu, current, create_pdu)
        extremities = await self._events.get_forward_extremities(room_id)
        current_state = None
        if soft is None:
            current_state = await self._state_after_joining(
                version, pdu, event_id, state_before, prevs, extremities
            )
        positions = await self._events.persist_incoming(
            room_id,
            [IncomingEvent(pdu, event_id, soft_failed=soft is not None, state_before=state_before)],
            received_ts,
            current_state=current_state,
        )
        if soft is not None:
            return Received(event_id, Outcome.SOFT_FAILED, soft)
        position = positions.get(event_id)
        if position is not None:
            concerned = (
                (pdu["state_key"],)
                if pdu.get("type") == "m.room.member" and isinstance(pdu.get("state_key"), str)
                else ()
            )
            await self._notifier.notify(
                Stream.EVENTS, position, room_id=room_id, user_ids=concerned
            )
        return Received(event_id, Outcome.ACCEPTED)

    async def _state_after_joining(
        self,
        version: RoomVersion,
        pdu: JsonDict,
        event_id: str,
        state_before: StateMap,
        prevs: Collection[str],
        extremities: Sequence[Extremity],
    ) -> StateMap | None:
        """The room's state once the event is an extremity beside those it leaves (their
        states and its own, resolved); None when it will be the only one (the store then
        takes its state)."""
        others = [e for e in extremities if e.event_id not in prevs]
        if not others:
            return None
        after = dict(state_before)
        if isinstance(pdu.get("state_key"), str):
            after[(pdu["type"], pdu["state_key"])] = event_id
        states = [after, *[await self._events.get_state_ids(e.state_group) for e in others]]
        return await self._resolved(version, states)

    async def _resolved(self, version: RoomVersion, states: Sequence[StateMap]) -> StateMap:
        distinct = list({tuple(sorted(s.items())): s for s in states}.values())
        if len(distinct) <= 1:
            return dict(distinct[0]) if distinct else {}
        if self._resolve is None:
            raise RuntimeError("several states and no state resolver")

        async def load(event_ids: Collection[str]) -> dict[str, JsonDict]:
            loaded = await self._events.get_events(event_ids)
            return {e.event_id: self._as_seen(e, version) for e in loaded.values()}

        return await self._resolve(version, distinct, load)

    async def _auth_failure_in(
        self,
        version: RoomVersion,
        pdu: JsonDict,
        state: Mapping[StateKey, str],
        create: JsonDict | None,
    ) -> str | None:
        """Why the auth rules refuse the event in ``state``, or None."""
        ids = {k: v for k, v in state.items() if k[0] in _AUTH_TYPES}
        loaded = await self._events.get_events(ids.values())
        rejected = await self._events.get_rejections(ids.values())
        keyed = {
            k: self._as_seen(loaded[v], version)
            for k, v in ids.items()
            if v in loaded and v not in rejected
        }
        try:
            check_auth(version, pdu, keyed, create_event=create)
        except MatrixError as e:
            return str(e)
        return None

    @staticmethod
    def _auth_failure(
        version: RoomVersion,
        pdu: JsonDict,
        auth_events: Sequence[JsonDict],
        create: JsonDict | None,
    ) -> str | None:
        try:
            keyed = check_auth_events_selection(version, pdu, auth_events)
            check_auth(version, pdu, keyed, create_event=create)
        except MatrixError as e:
            return str(e)
        return None

    @staticmethod
    def _as_seen(event: StoredEvent, version: RoomVersion) -> JsonDict:
        """As every server has it: a redacted event in its redacted form."""
        return event.pdu if event.redacted_by is None else redact(event.pdu, version)


# The state check_auth reads.
_AUTH_TYPES = frozenset(
    (
        "m.room.create",
        "m.room.power_levels",
        "m.room.member",
        "m.room.join_rules",
        "m.room.third_party_invite",
    )
)

# Server-server API, "Checks performed on receipt of a PDU": a PDU with more than these is
# refused (the numbers Synapse enforces too).
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
# Canonical JSON's integer range: a depth past it is not a valid PDU.
MAX_DEPTH = 2**53 - 1


def _graph_problem(
    pdu: JsonDict, event_id: str, room_id: str, prevs: Sequence[str], auths: Sequence[str]
) -> str | None:
    """Why the PDU cannot take a place in the room's graph, or None."""
    depth = pdu.get("depth")
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= MAX_DEPTH:
        return "depth is not an integer in range"
    if pdu.get("room_id", room_id) != room_id:
        return "another room's event"
    if len(prevs) > MAX_PREV_EVENTS or len(auths) > MAX_AUTH_EVENTS:
        return "too many prev_events or auth_events"
    if event_id in prevs or event_id in auths:
        return "refers to itself"
    if pdu.get("type") != "m.room.create" and not prevs:
        return "no prev_events"
    return None
