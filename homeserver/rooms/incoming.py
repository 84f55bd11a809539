"""The checks every event from another server passes, in the spec's order, before it is
persisted on the room graph (server-server API, "Checks performed on receipt of a PDU").

1. format and size, 2. signatures, 3. content hash: ``events/validation.py``
   (``validate_received_pdu``), with the signing keys of the servers concerned fetched first
   through the key ring (``ServerKeys``); a content-hash mismatch is stored redacted;
4. auth against its own ``auth_events``: a rejected or failing event is stored as rejected;
5. auth against the state before it (its prev_events' states, resolved);
6. soft-fail against the room's current state;
then ``EventStore.persist_incoming``, and the notifier wakes the room.

Events whose prev_events or auth_events are unknown are completed through a ``RemoteGraph``
(the server that sent them, which federation supplies): the missing events between our
forward extremities and the event (``get_missing_events``), then, for a gap that remains,
the state at the missing prev_events (``get_state_ids`` and the events we lack, checked and
stored as outliers with their auth chains), and the missing prev_events become backward
extremities of the room. Without one, such events are answered MISSING.

History asked of other servers (federation /backfill) goes through ``receive_backfilled``:
the same checks 1 to 5, then persisted below the events stream (``/messages`` serves it,
``/sync`` never meets it as news), with no soft-fail against the current state (it is not
news: it was the room's state when it was sent that counted), no change to the room's
current state or forward extremities and no wake-up; its parents that we lack become the
room's backward extremities, and the backward extremity it was is filled.

What the remote must tell us is asked first, without a lock; then steps 4 to 6 and the
persisting run one event of the room at a time on this worker (a lock per room), on the
graph as it is then. The room's extremities and current state are compared and swapped when
persisting, so a local send or another worker in between makes the last steps run again.

A redaction whose target we do not hold yet is stored as awaiting it (with whether its
sender had the redact level in the state before it); the store applies it when the target
is persisted, by the same rules (``pending_redactions``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from weakref import WeakValueDictionary

from signedjson.key import decode_verify_key_bytes
from unpaddedbase64 import decode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.events.auth import auth_types_for_event, check_auth, check_auth_events_selection
from homeserver.events.format import event_id_of, redact
from homeserver.events.power_levels import can_redact, has_redact_level, is_int
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from homeserver.events.validation import (
    KeyLookup,
    ServerKey,
    auth_chain_rejections,
    check_pdu_format,
    required_signers,
    validate_received_pdu,
)
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
# spec, server-server API "get_missing_events": how many events we ask for at most, as
# Synapse does; a longer gap is bridged with the state at its far end.
MISSING_EVENTS_LIMIT = 10
# How many events (state and auth chains) one gap may make us fetch and check: a room's
# whole state, with margin, not an unbounded amount a remote could make us store.
MAX_FETCHED_EVENTS = 50_000
# At most this many events of one backfill answer are received (the federation API asks
# for a limit; a server that gives more gives no more).
MAX_BACKFILL_EVENTS = 100
# A local send or another worker moved the room on between reading and persisting: how often
# the last steps run again before the event is refused for now (the sender retries).
MAX_PERSIST_ATTEMPTS = 20


class PublishedKey(Protocol):
    """A server's verify key as the key ring holds it (``federation.keyring.VerifyKey``)."""

    @property
    def key(self) -> str: ...  # unpadded base64

    @property
    def valid_until_ts(self) -> int: ...


class ServerKeys(Protocol):
    """Other servers' signing keys, fetched if need be (``federation.keyring.Keyring``)."""

    async def get_verify_keys(
        self, server_name: str, key_ids: Collection[str], min_valid_until_ts: int
    ) -> Mapping[str, PublishedKey]: ...


class RemoteGraphError(Exception):
    """The remote server could not answer (unreachable, an error, a malformed answer)."""


@dataclass(frozen=True, slots=True)
class RemoteState:
    """A remote server's answer to ``/state_ids``: the state before an event, and the auth
    chain of that state."""

    state_ids: Sequence[str]
    auth_chain_ids: Sequence[str]


class RemoteGraph(Protocol):
    """What the server that sent us events tells us of the room's graph (federation's
    ``/get_missing_events``, ``/state_ids`` and ``/event``). Each method raises
    ``RemoteGraphError`` when it cannot answer; what it returns is checked like any PDU."""

    async def get_missing_events(
        self,
        room_id: str,
        earliest: Sequence[str],
        latest: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> Sequence[JsonDict]: ...

    async def get_state_ids(self, room_id: str, event_id: str) -> RemoteState: ...

    async def get_events(self, room_id: str, event_ids: Collection[str]) -> Sequence[JsonDict]: ...


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SOFT_FAILED = "soft_failed"
    KNOWN = "known"  # persisted before: nothing done
    MISSING = "missing"  # prev_events or auth_events unknown and not to be had: nothing done
    DROPPED = "dropped"  # failed steps 1 to 3: not stored


@dataclass(frozen=True, slots=True)
class Received:
    event_id: str
    outcome: Outcome
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class _Redaction:
    """A redaction's verdict: the held event it redacts now, or the one it awaits (and
    whether it may redact anyone's event then, or only one of its sender's server)."""

    redacts: str | None
    awaits: str | None
    any_sender: bool


_NO_REDACTION = _Redaction(None, None, False)


class IncomingEvents:
    def __init__(
        self,
        events: EventStore,
        rooms: RoomStore,
        notifier: Notifier,
        keys: ServerKeys,
        resolve: StateResolver | None = None,
    ) -> None:
        self._events = events
        self._rooms = rooms
        self._notifier = notifier
        self._keys = keys
        self._resolve = resolve
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    async def receive(
        self,
        room_id: str,
        pdus: Sequence[JsonDict],
        received_ts: int,
        remote: RemoteGraph | None = None,
    ) -> list[Received]:
        """Check and persist PDUs of one room, parents before children, one at a time (each
        one's checks see the ones before it). ``remote`` completes what they refer to and we
        lack (the server that sent them); without it, such PDUs are answered MISSING."""
        room = await self._rooms.get_room(room_id)
        if room is None:
            raise LookupError(room_id)
        version = KNOWN_ROOM_VERSIONS[room.room_version]
        results = []
        for pdu in pdus:
            results.append(
                await self._receive_one(room_id, version, pdu, received_ts, remote, True)
            )
        return results

    async def receive_backfilled(
        self,
        room_id: str,
        pdus: Sequence[object],
        received_ts: int,
        remote: RemoteGraph,
    ) -> list[Received]:
        """Check and persist history of the room another server gave (its answer to
        /backfill), oldest first; ``remote`` (that server) completes what the oldest refer to
        and we lack (the state before them, the auth events). Checks 1 to 5 as ``receive``;
        the accepted events are served below the events stream and change nothing of the
        room's present (current state, forward extremities, latest event)."""
        room = await self._rooms.get_room(room_id)
        if room is None:
            raise LookupError(room_id)
        version = KNOWN_ROOM_VERSIONS[room.room_version]
        results: list[Received] = []
        usable: list[JsonDict] = []
        for pdu in pdus[:MAX_BACKFILL_EVENTS]:
            if isinstance(pdu, dict) and is_int(pdu.get("depth")):
                usable.append(pdu)
            else:
                results.append(Received("", Outcome.DROPPED, "not a PDU with a depth"))
        # Parents before children: depth orders a room's graph.
        usable.sort(key=lambda p: int(p["depth"]))
        for pdu in usable:
            results.append(
                await self._receive_one(
                    room_id, version, pdu, received_ts, remote, False, backfilled=True
                )
            )
        return results

    async def state_ids_at(self, event_id: str) -> tuple[StateMap, StateMap] | None:
        """The room's state before the event and after it (what federation's /state_ids and
        /state answer), or None for an event we do not hold in the graph."""
        return await self._events.state_ids_at(event_id)

    # --- steps 1 to 3 ------------------------------------------------------------------------

    async def _checked(self, pdu: JsonDict, version: RoomVersion) -> JsonDict:
        """The PDU, or its redacted form on a content-hash mismatch; raises for one to drop.
        The keys of the servers that must have signed it are fetched first."""
        if not isinstance(pdu, dict):
            raise MatrixError(Codes.BAD_JSON, "A PDU is an object")
        check_pdu_format(pdu, version)
        signatures = pdu.get("signatures")
        if not isinstance(signatures, dict):
            raise MatrixError(Codes.FORBIDDEN, "The PDU carries no signatures")
        # Room versions 5 and later: the key must have been valid when the event was sent.
        min_valid = pdu["origin_server_ts"] if version.enforce_key_validity else 0
        found: dict[tuple[str, str], ServerKey] = {}
        for server in required_signers(pdu, version):
            theirs = signatures.get(server)
            key_ids = [
                k for k in (theirs if isinstance(theirs, dict) else ()) if k.startswith("ed25519:")
            ]
            if not key_ids:
                continue  # validation says which server's signature is missing
            for key_id, key in (
                await self._keys.get_verify_keys(server, key_ids, min_valid)
            ).items():
                try:
                    verify_key = decode_verify_key_bytes(key_id, decode_base64(key.key))
                except (ValueError, TypeError):
                    continue
                found[(server, key_id)] = ServerKey(verify_key, key.valid_until_ts)

        lookup: KeyLookup = lambda server, key_id: found.get((server, key_id))  # noqa: E731
        return validate_received_pdu(pdu, version, lookup)

    async def _receive_one(
        self,
        room_id: str,
        version: RoomVersion,
        pdu: JsonDict,
        received_ts: int,
        remote: RemoteGraph | None,
        fill_gaps: bool,
        *,
        backfilled: bool = False,
    ) -> Received:
        event_id = ""  # unknown when the PDU cannot even be hashed
        try:
            event_id = event_id_of(pdu, version)
            pdu = await self._checked(pdu, version)
        except (MatrixError, ValueError, TypeError, KeyError, AttributeError) as e:
            logger.info("pdu dropped", extra={"room_id": room_id, "reason": str(e)})
            return Received(event_id, Outcome.DROPPED, str(e))
        prevs = referenced_ids(pdu, "prev_events")
        auths = referenced_ids(pdu, "auth_events")
        problem = _graph_problem(pdu, event_id, room_id, prevs, auths)
        if problem is not None:
            return Received(event_id, Outcome.DROPPED, problem)
        existing = await self._events.get_event(event_id)
        if existing is not None and _in_graph(existing):
            return Received(event_id, Outcome.KNOWN)

        # What the remote must tell us is asked first, without the room's lock: a slow
        # remote holds up neither the room's other events nor its local sends.
        loaded = await self._events.get_events([*prevs, *auths])
        foreign_prevs = [p for p in prevs if p in loaded and loaded[p].room_id != room_id]
        if foreign_prevs:
            # Another room's event as a parent would make that room's state this one's.
            return Received(
                event_id, Outcome.DROPPED, f"prev event {foreign_prevs[0]} belongs to another room"
            )
        lacking_auth = [a for a in auths if a not in loaded]
        if lacking_auth and remote is not None:
            await self._fetch_outliers(room_id, version, lacking_auth, remote, received_ts)
            loaded = await self._events.get_events([*prevs, *auths])
            lacking_auth = [a for a in auths if a not in loaded]
        if lacking_auth:
            return Received(event_id, Outcome.MISSING, f"unknown: {', '.join(lacking_auth)}")

        gap = [p for p in prevs if p not in loaded or not _in_graph(loaded[p])]
        if gap and remote is not None and fill_gaps:
            await self._fill_gap(room_id, version, pdu, event_id, received_ts, remote)
            loaded = await self._events.get_events(prevs)
            gap = [p for p in prevs if p not in loaded or not _in_graph(loaded[p])]
        remote_states: dict[str, StateMap] = {}
        if gap:
            if remote is None:
                return Received(event_id, Outcome.MISSING, f"unknown: {', '.join(gap)}")
            for p in gap:
                state = await self._state_after_remote(room_id, version, p, remote, received_ts)
                if state is None:
                    return Received(event_id, Outcome.MISSING, f"no state at {p}")
                remote_states[p] = state

        # Then the checks and the persisting, one event of the room at a time on this
        # worker, on the graph as it is now (another receipt or a local send may have moved
        # it meanwhile; the store's compare-and-swap covers other workers).
        async with self._room_lock(room_id):
            return await self._check_and_persist(
                room_id,
                version,
                pdu,
                event_id,
                prevs,
                auths,
                remote_states,
                received_ts,
                backfilled=backfilled,
            )

    def _room_lock(self, room_id: str) -> asyncio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = asyncio.Lock()
        return lock

    async def _check_and_persist(
        self,
        room_id: str,
        version: RoomVersion,
        pdu: JsonDict,
        event_id: str,
        prevs: Sequence[str],
        auths: Sequence[str],
        remote_states: Mapping[str, StateMap],
        received_ts: int,
        *,
        backfilled: bool,
    ) -> Received:
        """Steps 4 to 6 and the persisting, under the room's lock. ``remote_states`` are the
        states after the prev_events we lacked, as the remote said."""
        existing = await self._events.get_event(event_id)
        if existing is not None and _in_graph(existing):
            return Received(event_id, Outcome.KNOWN)
        loaded = await self._events.get_events([*prevs, *auths])
        if any(a not in loaded for a in auths):
            return Received(event_id, Outcome.MISSING, "an auth event is gone")
        states: list[StateMap] = []
        for p in prevs:
            if p in loaded and _in_graph(loaded[p]):
                states.append(await self._events.get_state_ids(loaded[p].state_group))
            elif p in remote_states:
                states.append(remote_states[p])
            else:
                return Received(event_id, Outcome.MISSING, f"unknown: {p}")
        create = await self._events.get_current_state_event(room_id, *CREATE)
        create_pdu = create.pdu if create is not None else None

        # 4. Against its own auth_events; a rejected one rejects it (spec, "Rejected events").
        rejected = await self._events.get_rejections(auths)
        reason: str | None = None
        foreign = [a for a in auths if loaded[a].room_id != room_id]
        if foreign:
            reason = f"auth event {foreign[0]} belongs to another room"
        elif rejected:
            reason = f"auth event {next(iter(rejected))} was rejected"
        else:
            reason = self._auth_failure(
                version, pdu, [self._as_seen(loaded[a], version) for a in auths], create_pdu
            )
        # 5. Against the state before it.
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
        if backfilled:
            # No soft-fail and no current state: history, not news.
            redaction = await self._redaction_applied(version, pdu, state_before, create_pdu)
            await self._events.persist_incoming(
                room_id,
                [
                    IncomingEvent(
                        pdu,
                        event_id,
                        state_before=state_before,
                        redacts=redaction.redacts,
                        awaits=redaction.awaits,
                        redacts_any=redaction.any_sender,
                        backfilled=True,
                    )
                ],
                received_ts,
            )
            return Received(event_id, Outcome.ACCEPTED)
        return await self._persist_checked(
            room_id, version, pdu, event_id, prevs, state_before, create_pdu, received_ts
        )

    async def _persist_checked(
        self,
        room_id: str,
        version: RoomVersion,
        pdu: JsonDict,
        event_id: str,
        prevs: Sequence[str],
        state_before: StateMap,
        create_pdu: JsonDict | None,
        received_ts: int,
    ) -> Received:
        """6. Against the room's current state, then persisted, the room's extremities and
        current state compared and swapped: read again and redone when another writer moved
        them in between."""
        redaction = await self._redaction_applied(version, pdu, state_before, create_pdu)
        for _ in range(MAX_PERSIST_ATTEMPTS):
            head = await self._rooms.get_room_head(room_id)
            if head is None:
                raise LookupError(room_id)
            current = await self._events.get_current_state_entries(
                room_id, _auth_keys(version, pdu)
            )
            soft = await self._auth_failure_in(version, pdu, current, create_pdu)
            current_state = None
            if soft is None:
                current_state = await self._state_after_joining(
                    version, pdu, event_id, state_before, prevs, head.forward_extremities
                )
            positions = await self._events.persist_incoming(
                room_id,
                [
                    IncomingEvent(
                        pdu,
                        event_id,
                        soft_failed=soft is not None,
                        state_before=state_before,
                        redacts=redaction.redacts,
                        awaits=redaction.awaits,
                        redacts_any=redaction.any_sender,
                    )
                ],
                received_ts,
                current_state=current_state,
                expected_latest=head.latest_event_id,
            )
            if positions is not None:
                break
        else:
            raise MatrixError(Codes.UNKNOWN, "The room is too busy, try again", status=503)
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

    async def _redaction_applied(
        self,
        version: RoomVersion,
        pdu: JsonDict,
        state_before: StateMap,
        create: JsonDict | None,
    ) -> _Redaction:
        """What a redaction redacts, when it may: from room version 3 the auth rules let
        every redaction in, and a server applies one only when its sender has the redact
        level in the state before it, or sent from the server of the redacted event's sender
        (rooms/fragments/v3-handling-redactions.md). The place of `redacts` is the version's
        (content from v11). A target not known yet is awaited: the store applies the
        redaction when it arrives, by the same rules."""
        if pdu.get("type") != "m.room.redaction":
            return _NO_REDACTION
        holder = pdu.get("content") if version.redacts_in_content else pdu
        target = holder.get("redacts") if isinstance(holder, dict) else None
        sender = pdu.get("sender")
        if not isinstance(target, str) or not isinstance(sender, str):
            return _NO_REDACTION
        original = (await self._events.get_events([target])).get(target)
        if original is not None and original.room_id != pdu.get("room_id", original.room_id):
            return _NO_REDACTION
        if version.event_format is EventFormat.V1:
            # v1-v2: the auth rules checked the redaction itself (the sender's server is the
            # redacted event ID's, or the sender has the redact level).
            return _Redaction(target, None, True) if original else _Redaction(None, target, True)
        power_id = state_before.get(("m.room.power_levels", ""))
        power = None
        if power_id is not None:
            loaded = (await self._events.get_events([power_id])).get(power_id)
            power = self._as_seen(loaded, version).get("content") if loaded else None
        if original is None:
            return _Redaction(None, target, has_redact_level(version, sender, power, create))
        allowed = can_redact(version, sender, original.sender, power, create)
        return _Redaction(target if allowed else None, None, False)

    # --- completing the graph ----------------------------------------------------------------

    async def _fill_gap(
        self,
        room_id: str,
        version: RoomVersion,
        pdu: JsonDict,
        event_id: str,
        received_ts: int,
        remote: RemoteGraph,
    ) -> None:
        """Ask for the events between our forward extremities and ``pdu`` and receive them,
        oldest first (each may still lack parents: its state then comes from the remote)."""
        head = await self._rooms.get_room_head(room_id)
        if head is None or not head.forward_extremities:
            return
        extremities = head.forward_extremities
        try:
            found = await remote.get_missing_events(
                room_id,
                [e.event_id for e in extremities],
                [event_id],
                MISSING_EVENTS_LIMIT,
                min(e.depth for e in extremities),
            )
        except RemoteGraphError as e:
            logger.info("get_missing_events failed", extra={"room_id": room_id, "error": str(e)})
            return
        ordered = sorted(
            (
                e
                for e in found[:MISSING_EVENTS_LIMIT]
                if isinstance(e, dict) and is_int(e.get("depth"))
            ),
            key=lambda e: e["depth"],
        )
        for missing in ordered:
            if missing is pdu:
                continue
            await self._receive_one(room_id, version, missing, received_ts, remote, False)

    async def _state_after_remote(
        self,
        room_id: str,
        version: RoomVersion,
        prev_id: str,
        remote: RemoteGraph,
        received_ts: int,
    ) -> StateMap | None:
        """The state after ``prev_id``, an event we lack, as its server says (the state before
        it and itself): the events we lack are fetched, checked and stored as outliers; the
        rejected ones, those of another room and the ones not to be had are left out. None
        when the remote cannot say."""
        try:
            answer = await remote.get_state_ids(room_id, prev_id)
        except RemoteGraphError as e:
            logger.info("state_ids failed", extra={"room_id": room_id, "error": str(e)})
            return None
        state_ids = [i for i in answer.state_ids if isinstance(i, str)]
        chain_ids = [i for i in answer.auth_chain_ids if isinstance(i, str)]
        wanted = list(dict.fromkeys([prev_id, *state_ids, *chain_ids]))
        if len(wanted) > MAX_FETCHED_EVENTS:
            logger.info("state too large", extra={"room_id": room_id, "events": len(wanted)})
            return None
        held = await self._events.get_events(wanted)
        lacking = [i for i in wanted if i not in held]
        if lacking:
            await self._fetch_outliers(room_id, version, lacking, remote, received_ts)
            held = await self._events.get_events(wanted)
        rejected = await self._events.get_rejections(wanted)
        prev = held.get(prev_id)
        if prev is None or prev.room_id != room_id:
            return None
        state: StateMap = {}
        for i in state_ids:
            event = held.get(i)
            if event is None or event.room_id != room_id or i in rejected:
                continue
            if event.state_key is not None:
                state[(event.type, event.state_key)] = i
        if prev.state_key is not None and prev_id not in rejected:
            state[(prev.type, prev.state_key)] = prev_id
        return state

    async def _fetch_outliers(
        self,
        room_id: str,
        version: RoomVersion,
        event_ids: Collection[str],
        remote: RemoteGraph,
        received_ts: int,
    ) -> None:
        """Fetch the events and the parts of their auth chains we lack, check them (steps 1
        to 3, then each against its own auth events, auth events first) and store them as
        outliers, the rejected ones as rejected. Events the remote does not give, gives for
        another ID or another room, or that fail steps 1 to 3, are not stored: what cites
        them is rejected."""
        fetched: dict[str, JsonDict] = {}
        wanted = set(event_ids)
        asked: set[str] = set()
        while wanted and len(asked) < MAX_FETCHED_EVENTS:
            # The bound holds for the whole fetch, not per round (a round of a fanning
            # auth chain may name many times the events of the one before).
            wanted = set(sorted(wanted)[: MAX_FETCHED_EVENTS - len(asked)])
            asked |= wanted
            try:
                answer = await remote.get_events(room_id, sorted(wanted))
            except RemoteGraphError as e:
                logger.info("event fetch failed", extra={"room_id": room_id, "error": str(e)})
                break
            for pdu in answer:
                try:
                    event_id = event_id_of(pdu, version)
                    if event_id not in wanted or event_id in fetched:
                        continue  # not what we asked for
                    checked = await self._checked(pdu, version)
                except (MatrixError, ValueError, TypeError, KeyError, AttributeError) as e:
                    logger.info("fetched pdu dropped", extra={"room_id": room_id, "reason": str(e)})
                    continue
                prevs = referenced_ids(checked, "prev_events")
                auths = referenced_ids(checked, "auth_events")
                if _graph_problem(checked, event_id, room_id, prevs, auths) is None:
                    fetched[event_id] = checked
            cited = {a for pdu in fetched.values() for a in referenced_ids(pdu, "auth_events")}
            cited -= fetched.keys()
            held = await self._events.get_events(cited) if cited else {}
            wanted = {a for a in cited if a not in held} - asked
        if not fetched:
            return
        # Step 4 over the fetched events and the auth events we hold with their own auth
        # chains (good ones only: a rejected or foreign one leaves what cites it without
        # it, so rejected).
        cited = {a for pdu in fetched.values() for a in referenced_ids(pdu, "auth_events")}
        create = await self._events.get_current_state_event(room_id, *CREATE)
        if create is not None:
            cited.add(create.event_id)
        cited -= fetched.keys()
        cited |= await self._events.get_auth_chain(cited)
        held = await self._events.get_events(cited)
        bad = await self._events.get_rejections(held)
        chain = {
            i: self._as_seen(e, version)
            for i, e in held.items()
            if i not in bad and e.room_id == room_id
        }
        chain.update(fetched)
        reasons = auth_chain_rejections(chain, version)
        await self._events.persist_incoming(
            room_id,
            [
                IncomingEvent(pdu, i, outlier=True, rejected=reasons.get(i))
                for i, pdu in fetched.items()
            ],
            received_ts,
        )

    # --- state -------------------------------------------------------------------------------

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
        # The event is not stored yet: the resolver is given it.
        return await self._resolved(version, states, {event_id: pdu})

    async def _resolved(
        self,
        version: RoomVersion,
        states: Sequence[StateMap],
        pending: Mapping[str, JsonDict] | None = None,
    ) -> StateMap:
        distinct: list[StateMap] = []
        for state in states:
            if all(state != seen for seen in distinct):
                distinct.append(state)
        if len(distinct) <= 1:
            return dict(distinct[0]) if distinct else {}
        if self._resolve is None:
            raise RuntimeError("several states and no state resolver")

        async def load(event_ids: Collection[str]) -> dict[str, JsonDict]:
            loaded = await self._events.get_events(event_ids)
            found = {e.event_id: self._as_seen(e, version) for e in loaded.values()}
            for event_id in event_ids:
                if pending is not None and event_id in pending:
                    found[event_id] = pending[event_id]
            return found

        return await self._resolve(version, distinct, load)

    async def _auth_failure_in(
        self,
        version: RoomVersion,
        pdu: JsonDict,
        state: Mapping[StateKey, str],
        create: JsonDict | None,
    ) -> str | None:
        """Why the auth rules refuse the event in ``state``, or None: only the entries the
        auth events selection picks are read (not a large room's every member)."""
        ids = {k: state[k] for k in _auth_keys(version, pdu) if k in state}
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


def _in_graph(event: StoredEvent) -> bool:
    """Held with its place in the graph and its state (an outlier has neither)."""
    return event.state_group != 0


def _auth_keys(version: RoomVersion, pdu: JsonDict) -> list[StateKey]:
    """The state entries the auth rules read for ``pdu`` (spec, "auth events selection")."""
    content = pdu.get("content")
    return auth_types_for_event(
        version,
        str(pdu.get("type")),
        pdu.get("state_key") if isinstance(pdu.get("state_key"), str) else None,
        str(pdu.get("sender")),
        content if isinstance(content, dict) else {},
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
