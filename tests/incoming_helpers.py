"""A remote server's copy of a room for the tests of the inbound pipeline: it builds events
signed with its real ed25519 key on any part of the room's graph, and answers the questions
of the pipeline's ``RemoteGraph`` (missing events, state at an event, events by ID) from what
it built and what the homeserver holds (no HTTP)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.events.auth import auth_types_for_event
from homeserver.events.format import add_content_hash, compute_event_id, sign_event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.rooms.incoming import RemoteGraphError, RemoteState
from homeserver.storage.events import StateMap, referenced_ids
from tests.federation_helpers import FakeRemote


class RemoteRoom:
    """``remote``'s view of a room the homeserver holds; also the pipeline's RemoteGraph."""

    def __init__(self, hs: Homeserver, room_id: str, remote: FakeRemote) -> None:
        self.hs = hs
        self.room_id = room_id
        self.remote = remote
        self.pdus: dict[str, JsonDict] = {}
        self._before: dict[str, StateMap] = {}
        self._after: dict[str, StateMap] = {}
        self.calls: list[str] = []
        self.unreachable = False

    async def version(self) -> RoomVersion:
        room = await self.hs.room_store.get_room(self.room_id)
        assert room is not None
        return KNOWN_ROOM_VERSIONS[room.room_version]

    async def _state_after(self, event_id: str) -> StateMap:
        if event_id in self._after:
            return dict(self._after[event_id])
        at = await self.hs.event_store.state_ids_at(event_id)
        assert at is not None, event_id
        return at[1]

    async def _depth(self, event_id: str) -> int:
        if event_id in self.pdus:
            return int(self.pdus[event_id]["depth"])
        stored = await self.hs.event_store.get_event(event_id)
        assert stored is not None, event_id
        return stored.depth

    async def build(
        self,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        sender: str = "@eve:remote.test",
        prevs: list[str] | None = None,
        ts: int | None = None,
        sign: bool = True,
    ) -> tuple[JsonDict, str]:
        """An event on ``prevs`` (default: the homeserver's forward extremities), its auth
        events chosen from the state after the first of them, hashed and signed."""
        version = await self.version()
        if prevs is None:
            heads = await self.hs.event_store.get_forward_extremities(self.room_id)
            prevs = [e.event_id for e in heads]
        state = await self._state_after(prevs[0])
        wanted = auth_types_for_event(version, event_type, state_key, sender, content)
        depths = [await self._depth(p) for p in prevs]
        pdu: JsonDict = {
            "room_id": self.room_id,
            "sender": sender,
            "type": event_type,
            "content": content,
            "origin_server_ts": ts if ts is not None else self.hs.clock.now_ms(),
            "depth": max(depths) + 1,
            "prev_events": prevs,
            "auth_events": [state[k] for k in wanted if k in state],
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        add_content_hash(pdu)
        if sign:
            sign_event(pdu, self.remote.server_name, self.remote.key, version)
        event_id = compute_event_id(pdu, version)
        self.pdus[event_id] = pdu
        self._before[event_id] = dict(state)
        if state_key is not None:
            state[(event_type, state_key)] = event_id
        self._after[event_id] = state
        return pdu, event_id

    async def resign(self, pdu: JsonDict, *, rehash: bool = True) -> str:
        """Sign ``pdu`` again after a test changed it (and hash it again, unless the test
        wants its content hash wrong); its new ID."""
        version = await self.version()
        pdu.pop("signatures", None)
        if rehash:
            pdu.pop("hashes", None)
            add_content_hash(pdu)
        sign_event(pdu, self.remote.server_name, self.remote.key, version)
        event_id = compute_event_id(pdu, version)
        self.pdus[event_id] = pdu
        return event_id

    async def chain(self, n: int, *, prevs: list[str] | None = None) -> list[tuple[JsonDict, str]]:
        """``n`` messages, each on the one before (the first on ``prevs``)."""
        built = []
        for i in range(n):
            built.append(await self.build("m.room.message", {"body": f"m{i}"}, prevs=prevs))
            prevs = [built[-1][1]]
        return built

    # --- RemoteGraph -------------------------------------------------------------------------

    def _check(self, room_id: str, call: str) -> None:
        self.calls.append(call)
        if self.unreachable:
            raise RemoteGraphError("unreachable")
        assert room_id == self.room_id

    async def get_missing_events(
        self,
        room_id: str,
        earliest: Sequence[str],
        latest: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> Sequence[JsonDict]:
        self._check(room_id, "get_missing_events")
        found: dict[str, JsonDict] = {}
        queue = [p for e in latest for p in referenced_ids(self.pdus.get(e, {}), "prev_events")]
        while queue and len(found) < limit:
            event_id = queue.pop(0)
            if event_id in earliest or event_id in found or event_id not in self.pdus:
                continue
            pdu = self.pdus[event_id]
            if pdu["depth"] < min_depth:
                continue
            found[event_id] = pdu
            queue.extend(referenced_ids(pdu, "prev_events"))
        return sorted(found.values(), key=lambda p: p["depth"])

    async def get_state_ids(self, room_id: str, event_id: str) -> RemoteState:
        self._check(room_id, "get_state_ids")
        if event_id not in self._before:
            raise RemoteGraphError("unknown event")
        state = list(self._before[event_id].values())
        chain: set[str] = set()
        todo = list(state)
        while todo:
            pdu = await self._pdu(todo.pop())
            for a in referenced_ids(pdu or {}, "auth_events"):
                if a not in chain:
                    chain.add(a)
                    todo.append(a)
        return RemoteState(state, sorted(chain))

    async def get_events(self, room_id: str, event_ids: Collection[str]) -> Sequence[JsonDict]:
        self._check(room_id, "get_events")
        found = [await self._pdu(i) for i in event_ids]
        return [p for p in found if p is not None]

    async def _pdu(self, event_id: str) -> JsonDict | None:
        if event_id in self.pdus:
            return self.pdus[event_id]
        stored = await self.hs.event_store.get_event(event_id)
        return stored.pdu if stored is not None else None
