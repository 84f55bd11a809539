"""Building, authorizing, signing and persisting local events: the send half of the hot path."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol
from weakref import WeakValueDictionary

from cachetools import LRUCache
from unpaddedbase64 import encode_base64

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.crypto.signing import SigningKey
from homeserver.events.auth import auth_types_for_event, check_auth
from homeserver.events.format import (
    MAX_PDU_BYTES,
    canonical_json,
    check_event_size_and_shape,
    compute_reference_hash,
    compute_room_id_v12,
    event_id_of,
    hash_and_sign_event,
    redact,
)
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from homeserver.storage.events import (
    EventStore,
    Extremity,
    NewEvent,
    StateKey,
    StateMap,
    StoredEvent,
)
from homeserver.storage.push import PushAction
from homeserver.storage.rooms import Room, RoomStore
from homeserver.wakeups.notifier import Notifier

logger = logging.getLogger(__name__)

# How often a send is rebuilt when another writer moved the room on in between.
MAX_BUILD_ATTEMPTS = 20
# A new event's prev_events are at most this many forward extremities, the deepest: the
# spec advises a bound, and Synapse uses this one; the rest stay extremities for later.
MAX_PREV_EVENTS = 10
# A room's events kept for its next builds at most (mostly its senders' memberships).
MAX_KNOWN_EVENTS = 1000


@dataclass(frozen=True, slots=True)
class SentEvent:
    event_id: str
    stream_ordering: int


@dataclass(frozen=True, slots=True)
class _KnownEvents:
    latest_event_id: str
    redaction_epoch: int
    events: dict[str, StoredEvent]


@dataclass(frozen=True, slots=True)
class Txn:
    device_id: str
    txn_id: str
    scope: str


class PushActions(Protocol):
    """Evaluates the members' push rules for an event about to be persisted (issue 6)."""

    async def actions_for(
        self,
        room: Room,
        pdu: JsonDict,
        event_id: str,
        auth_events: Mapping[tuple[str, str], JsonDict],
        create: JsonDict | None,
    ) -> tuple[PushAction, ...]: ...


class StateResolver(Protocol):
    """Resolves several state sets of a room (state resolution v2, v2.1; issue 17), loading
    the events it needs through ``get_events``."""

    async def __call__(
        self,
        version: RoomVersion,
        state_sets: Sequence[StateMap],
        get_events: Callable[[Collection[str]], Awaitable[Mapping[str, JsonDict]]],
    ) -> dict[StateKey, str]: ...


class EventSender:
    def __init__(
        self,
        events: EventStore,
        rooms: RoomStore,
        notifier: Notifier,
        clock: Clock,
        server_name: str,
        signing_key: SigningKey,
        push: PushActions,
        resolve: StateResolver | None = None,
        observe_persist: Callable[[float], None] | None = None,
    ) -> None:
        self._events = events
        self._rooms = rooms
        self._notifier = notifier
        self._clock = clock
        self._server_name = server_name
        self._signing_key = signing_key
        # One builder at a time per room on this worker; other workers are kept out by the
        # compare-and-swap in EventStore.persist_event.
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()
        # Each room's row as this worker last moved it on. Only a starting guess: a stale one
        # fails the compare-and-swap and the room is read again.
        self._heads: LRUCache[str, Room] = LRUCache(maxsize=10_000)
        # The events the room's last builds here loaded (auth events: create, power levels,
        # senders' memberships), valid while the room's head is the one this worker moved it
        # to and no redaction was written since: an event never changes but for its
        # ``redacted_by``. Another writer's event in the room moves the head, which fails
        # the compare-and-swap and drops them.
        self._known: LRUCache[str, _KnownEvents] = LRUCache(maxsize=10_000)
        self._push = push
        # The metrics' event persist latency (seconds), when there are metrics.
        self._observe_persist = observe_persist
        # How the states of several forward extremities become one (issue 17's state
        # resolution). Without it, an event on extremities whose states differ is built on
        # the room's current state, as before rooms were graphs.
        self._resolve = resolve

    def _known_events(self, room: Room | None) -> dict[str, StoredEvent]:
        """The events this room's last builds loaded, when still valid for ``room`` (its head
        as cached here); a fresh map otherwise."""
        if room is not None:
            cached = self._known.get(room.room_id)
            if (
                cached is not None
                and cached.latest_event_id == room.latest_event_id
                and cached.redaction_epoch == self._events.redaction_epoch
            ):
                return cached.events
        return {}

    def version(self, room: Room) -> RoomVersion:
        return KNOWN_ROOM_VERSIONS[room.room_version]

    def _name(self, pdu: JsonDict, version: RoomVersion) -> None:
        """Room versions 1 and 2 (rooms/fragments/v1-event-ids.md): the event carries its ID,
        `$opaque:our server`, chosen here and hashed and signed with the rest; the auth rules
        of those versions read its domain (redactions)."""
        if version.event_id_in_event:
            pdu["event_id"] = f"${secrets.token_urlsafe(18)}:{self._server_name}"

    def _finish(self, pdu: JsonDict, version: RoomVersion) -> str:
        hash_and_sign_event(pdu, self._server_name, self._signing_key, version)
        if len(canonical_json(pdu)) > MAX_PDU_BYTES:
            raise MatrixError(Codes.TOO_LARGE, f"Event is larger than {MAX_PDU_BYTES} bytes")
        return event_id_of(pdu, version)

    def build_create_event(
        self, version: RoomVersion, sender: str, content: JsonDict, origin_server_ts: int
    ) -> tuple[RoomID, JsonDict, str]:
        """(room_id, pdu, event_id) of a new room's ``m.room.create`` event."""
        pdu: JsonDict = {
            "type": "m.room.create",
            "state_key": "",
            "sender": sender,
            "content": content,
            "origin_server_ts": origin_server_ts,
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
        }
        self._name(pdu, version)
        if version.room_id_is_create_event_hash:
            check_event_size_and_shape(pdu)
            check_auth(version, pdu, {})
            event_id = self._finish(pdu, version)
            return RoomID(compute_room_id_v12(pdu, version)), pdu, event_id
        room_id = _random_room_id(self._server_name)
        pdu["room_id"] = room_id
        check_event_size_and_shape(pdu)
        check_auth(version, pdu, {})
        return room_id, pdu, self._finish(pdu, version)

    async def persist_create_event(self, room_id: str, pdu: JsonDict, event_id: str) -> SentEvent:
        position = await self._events.persist_event(
            NewEvent(pdu, event_id, room_id, {}), expected_latest=None
        )
        if position is None:
            raise MatrixError(Codes.ROOM_IN_USE, "Room already exists")
        await self._notifier.notify(
            Stream.EVENTS, position, room_id=room_id, user_ids=(pdu["sender"],)
        )
        return SentEvent(event_id, position)

    async def send(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: JsonDict,
        *,
        state_key: str | None = None,
        txn: Txn | None = None,
        redacts: str | None = None,
    ) -> SentEvent:
        """Build the next event of the room on its current state, check it, persist it."""
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = asyncio.Lock()
        async with lock:
            for attempt in range(MAX_BUILD_ATTEMPTS):
                room = self._heads.get(room_id) if attempt == 0 else None
                epoch = self._events.redaction_epoch  # before any read of this attempt
                known = self._known_events(room)
                if room is None:
                    room = await self._rooms.get_room_head(room_id)
                    if (
                        room is None
                        or room.current_state_group is None
                        or not room.forward_extremities
                    ):
                        raise MatrixError(Codes.NOT_FOUND, "Unknown room")
                async with self._events.pinned_reads():  # one connection for its reads
                    new = await self._build(
                        room, sender, event_type, content, state_key, txn, redacts, known
                    )
                # A taken transaction ID raises DuplicateTxn: the send service answers it.
                started = time.perf_counter()
                position = await self._events.persist_event(new, room.latest_event_id)
                if self._observe_persist is not None:
                    self._observe_persist(time.perf_counter() - started)
                if position is not None:
                    break
                self._heads.pop(room_id, None)
                self._known.pop(room_id, None)
            else:
                raise MatrixError(Codes.UNKNOWN, "The room is too busy, try again", status=503)
            if (
                state_key is None
                and new.prev_state is None
                and len(room.forward_extremities) <= MAX_PREV_EVENTS
            ):
                # It took every extremity's place, and its state is the room's.
                assert room.current_state_group is not None
                depth = new.pdu["depth"]
                self._heads[room_id] = replace(
                    room,
                    latest_event_id=new.event_id,
                    current_depth=depth,
                    forward_extremities=(Extremity(new.event_id, depth, room.current_state_group),),
                )
            else:  # a new state group, which only the store knows: read the room next time
                self._heads.pop(room_id, None)
            if (
                event_type == "m.room.redaction"
                or room_id not in self._heads
                or len(known) > MAX_KNOWN_EVENTS
            ):
                self._known.pop(room_id, None)
            else:
                self._known[room_id] = _KnownEvents(new.event_id, epoch, known)
        concerned = (state_key,) if event_type == "m.room.member" and state_key else ()
        await self._notifier.notify(Stream.EVENTS, position, room_id=room_id, user_ids=concerned)
        return SentEvent(new.event_id, position)

    async def _build(
        self,
        room: Room,
        sender: str,
        event_type: str,
        content: JsonDict,
        state_key: str | None,
        txn: Txn | None,
        redacts: str | None,
        known: dict[str, StoredEvent],
    ) -> NewEvent:
        version = self.version(room)
        parents = room.forward_extremities[:MAX_PREV_EVENTS]
        state, prev_state = await self._state_before(room, version, parents)
        wanted = auth_types_for_event(version, event_type, state_key, sender, content)
        auth_ids = [state[k] for k in wanted if k in state]
        create_id = state.get(("m.room.create", ""))
        prev_ids = [e.event_id for e in parents]
        wanted_ids = [*auth_ids, create_id] if create_id is not None else list(auth_ids)
        if version.event_format is EventFormat.V1:
            wanted_ids += prev_ids  # their reference hashes go into the new event
        loaded = {i: known[i] for i in wanted_ids if i in known}
        if len(loaded) < len(wanted_ids):
            read = await self._events.get_events(i for i in wanted_ids if i not in loaded)
            loaded.update(read)
            known.update(read)
        pdu: JsonDict = {
            "room_id": room.room_id,
            "sender": sender,
            "type": event_type,
            "content": content,
            "origin_server_ts": self._clock.now_ms(),
            "depth": max(e.depth for e in parents) + 1,
            "prev_events": _references(prev_ids, loaded, version),
            "auth_events": _references(auth_ids, loaded, version),
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            if version.redacts_in_content:
                pdu["content"] = {**content, "redacts": redacts}
            else:
                pdu["redacts"] = redacts
        self._name(pdu, version)
        check_event_size_and_shape(pdu)
        # A redacted auth event counts in its redacted form, as every server sees it.
        auth_events = {
            (e.type, e.state_key or ""): e.pdu if e.redacted_by is None else redact(e.pdu, version)
            for e in loaded.values()
            if e.event_id in auth_ids
        }
        create = loaded[create_id].pdu if create_id in loaded else None
        check_auth(version, pdu, auth_events, create_event=create)
        event_id = self._finish(pdu, version)
        unsigned: JsonDict = {}
        if state_key is not None:
            replaced = state.get((event_type, state_key))
            if replaced is not None:
                previous = await self._events.get_event(replaced)
                unsigned["replaces_state"] = replaced
                if previous is not None:
                    unsigned["prev_content"] = previous.content
                    unsigned["prev_sender"] = previous.sender
        push_actions = await self._push.actions_for(room, pdu, event_id, auth_events, create)
        current_state = await self._room_state_after(room, version, state, pdu, event_id)
        return NewEvent(
            pdu,
            event_id,
            room.room_id,
            unsigned,
            device_id=txn.device_id if txn else None,
            txn_id=txn.txn_id if txn else None,
            txn_scope=txn.scope if txn else None,
            push_actions=push_actions,
            prev_state=prev_state,
            current_state=current_state,
        )

    async def _room_state_after(
        self, room: Room, version: RoomVersion, state: StateMap, pdu: JsonDict, event_id: str
    ) -> StateMap | None:
        """The room's state once the event replaces the extremities it cites, when more are
        left than it may cite: its state after and theirs, resolved (None when there are no
        others, or they change nothing: the room's state is then the event's)."""
        left_out = room.forward_extremities[MAX_PREV_EVENTS:]
        if not left_out or self._resolve is None:
            return None
        after = dict(state)
        state_key = pdu.get("state_key")
        if isinstance(state_key, str):
            after[(pdu["type"], state_key)] = event_id
        states = [after]
        for group in dict.fromkeys(e.state_group for e in left_out):
            other = await self._events.get_state_ids(group)
            if other != after:
                states.append(other)
        if len(states) == 1:
            return None
        # The event is not stored yet: the resolver is given it.
        resolved = await self._resolve(version, states, self._loader(version, {event_id: pdu}))
        return None if resolved == after else resolved

    def _loader(
        self, version: RoomVersion, pending: Mapping[str, JsonDict] | None = None
    ) -> Callable[[Collection[str]], Awaitable[Mapping[str, JsonDict]]]:
        async def load(event_ids: Collection[str]) -> dict[str, JsonDict]:
            # As every server has them: a redacted event in its redacted form.
            loaded = await self._events.get_events(event_ids)
            found = {
                e.event_id: e.pdu if e.redacted_by is None else redact(e.pdu, version)
                for e in loaded.values()
            }
            if pending is not None:
                found.update({i: p for i, p in pending.items() if i in event_ids})
            return found

        return load

    async def _state_before(
        self, room: Room, version: RoomVersion, parents: Sequence[Extremity]
    ) -> tuple[StateMap, StateMap | None]:
        """The state a new event on ``parents`` is sent in, and that again when it is not the
        room's current state (the event then carries it to the store). One extremity, or
        several with one state, is the usual case: nothing is resolved."""
        current = room.current_state_group
        assert current is not None
        groups = list(dict.fromkeys(e.state_group for e in parents))
        if groups == [current]:
            return await self._events.get_state_ids(current), None
        states = [await self._events.get_state_ids(g) for g in groups]
        if len(states) == 1:
            return states[0], states[0]
        if self._resolve is None:
            logger.warning(
                "no state resolver: built on current state", extra={"room_id": room.room_id}
            )
            return await self._events.get_state_ids(current), None

        resolved = await self._resolve(version, states, self._loader(version))
        return resolved, resolved


def _references(
    event_ids: list[str], loaded: Mapping[str, StoredEvent], version: RoomVersion
) -> list[Any]:
    """`prev_events` or `auth_events` in the room version's format: the IDs from v3; in v1
    and v2 `[ID, {"sha256": reference hash}]` pairs (server-server API, PDUs of v1-v2)."""
    if version.event_format is not EventFormat.V1:
        return list(event_ids)
    out: list[Any] = []
    for event_id in event_ids:
        event = loaded.get(event_id)
        if event is None:
            raise MatrixError(Codes.UNKNOWN, "An event this one refers to is missing")
        reference = encode_base64(compute_reference_hash(event.pdu, version))
        out.append([event_id, {"sha256": reference}])
    return out


def _random_room_id(server_name: str) -> RoomID:
    return RoomID(f"!{secrets.token_urlsafe(18)}:{server_name}")
