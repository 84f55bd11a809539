"""State resolution v2 (room versions 2-11) and v2.1 (room version 12), as pure functions.

Spec: rooms/fragments/v2-state-res.md, and rooms/v12.md "State resolution" for v2.1, which
(a) starts the iterative auth checks from an empty state map instead of the unconflicted state
map and (b) adds the *conflicted state subgraph* (every event on an `auth_events` path between
two conflicted events) to the full conflicted set. Room version 1 is in `state_res_v1`.

The caller gives the state sets and a way to load events by ID; every event reachable through
`auth_events` from the state sets is loaded once, layer by layer, so a storage-backed source
answers a few batched queries rather than one per event. Orderings use heaps and memoised
mainline positions, so a room with tens of thousands of members resolves in linear time in the
size of its auth chain plus a logarithmic factor for the sorts.
"""

from __future__ import annotations

import heapq
import inspect
import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol, TypeAlias

from homeserver.core.errors import MatrixError
from homeserver.core.types import JsonDict
from homeserver.events.auth import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    StateKey,
    auth_types_for_event,
    check_auth,
)
from homeserver.events.format import auth_event_ids
from homeserver.events.power_levels import CREATOR_DEFAULT_LEVEL, get_creators, to_level
from homeserver.events.room_versions import RoomVersion, StateResolution

StateMap: TypeAlias = Mapping[StateKey, str]
# Loads events by ID; IDs it does not know are left out of the answer. Sync or async.
EventSource: TypeAlias = Callable[
    [Collection[str]], Mapping[str, JsonDict] | Awaitable[Mapping[str, JsonDict]]
]


class AuthChainIndex(Protocol):
    """What a store with an auth chain index answers, so that a resolution loads only the
    events it touches instead of the whole auth chains of the state sets."""

    async def auth_chain_difference(self, state_sets: Sequence[Collection[str]]) -> set[str]:
        """∪ Cᵢ − ∩ Cᵢ, where Cᵢ is the set's events and all their auth chains."""
        ...

    async def conflicted_subgraph(self, conflicted: Collection[str]) -> set[str]:
        """The events on an auth path between two of `conflicted`, endpoints included."""
        ...


async def resolve_state(
    version: RoomVersion,
    state_sets: Sequence[StateMap],
    get_events: EventSource,
    rejected: Collection[str] = frozenset(),
    auth_index: AuthChainIndex | None = None,
) -> dict[StateKey, str]:
    """The resolution of `state_sets` in a room of `version` (v2 or v2.1).

    `rejected` holds the IDs of events rejected on receipt: they are never used as the auth
    event of another during the iterative auth checks, but one that is itself conflicted is
    checked like any other and may enter the state (spec, "Rejected events"; Synapse keeps
    such an event out, which its code notes as a departure from the spec). Without an
    `auth_index` the auth chains of every state set are loaded through `get_events`.
    """
    if version.state_resolution is StateResolution.V1:
        raise ValueError("Room version 1 uses state_res_v1.resolve_state_v1")
    unconflicted, conflicted = separate(state_sets)
    if not conflicted:
        return dict(unconflicted)
    graph = _AuthGraph(version, get_events)
    conflicted_ids = {eid for ids in conflicted.values() for eid in ids}
    v2_1 = version.state_resolution is StateResolution.V2_1
    if auth_index is None:
        await graph.load({eid for state in state_sets for eid in state.values()})
        full = conflicted_ids | graph.auth_difference(state_sets)
        if v2_1:
            full |= graph.conflicted_subgraph(conflicted_ids)
    else:
        sets = [set(state.values()) for state in state_sets]
        full = conflicted_ids | set(await auth_index.auth_chain_difference(sets))
        if v2_1:
            full |= set(await auth_index.conflicted_subgraph(conflicted_ids))
    await graph.load_parents(full)
    # An event nobody could give us cannot take part (the other servers skip it as well).
    full = {eid for eid in full if eid in graph.events}

    # Step 1 enlarges the power events by their auth chains within the full conflicted set,
    # walking auth edges between events of that set only, as Synapse does. Read literally, the
    # spec would also take a conflicted event reached only through an unconflicted one (a
    # member event under a join that every state's chain holds); a server must land where the
    # rest of the room lands, so the reading the deployed servers share is the one used.
    power = {eid for eid in full if is_power_event(graph.events[eid])}
    power_chain = graph.auth_closure(power, within=full)
    sorted_power = graph.reverse_topological_power_order(power_chain)

    base: dict[StateKey, str] = (
        {} if version.state_resolution is StateResolution.V2_1 else dict(unconflicted)
    )
    partial = await _iterative_auth_checks(graph, sorted_power, base, rejected)

    leftover = [eid for eid in full if eid not in power_chain]
    resolved_levels = partial.get((POWER_LEVELS, ""))
    await graph.load_power_chains(leftover + ([resolved_levels] if resolved_levels else []))
    ordered = graph.mainline_order(leftover, resolved_levels)
    resolved = await _iterative_auth_checks(graph, ordered, partial, rejected)
    resolved.update(unconflicted)
    return resolved


def separate(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """The unconflicted state map and, per key, the conflicted events. A key missing from one
    of the sets is conflicted: the pair is not "present in every state map"."""
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    keys = {key for state in state_sets for key in state}
    for key in keys:
        values = {state.get(key) for state in state_sets}
        if len(values) == 1:
            (value,) = values
            if value is not None:
                unconflicted[key] = value
        else:
            conflicted[key] = {v for v in values if v is not None}
    return unconflicted, conflicted


def is_power_event(event: JsonDict) -> bool:
    """spec, "Power events": power levels, join rules, and kicks and bans of others."""
    event_type, state_key = event.get("type"), event.get("state_key")
    if not isinstance(state_key, str):
        return False
    if event_type in (POWER_LEVELS, JOIN_RULES):
        return True
    if event_type == MEMBER:
        content = event.get("content")
        membership = content.get("membership") if isinstance(content, dict) else None
        return membership in ("leave", "ban") and event.get("sender") != state_key
    return False


class _AuthGraph:
    """The events of one resolution and their `auth_events` edges, loaded once."""

    def __init__(self, version: RoomVersion, get_events: EventSource) -> None:
        self.version = version
        self._get_events = get_events
        self.events: dict[str, JsonDict] = {}
        self.auth: dict[str, list[str]] = {}  # event ID -> auth event IDs (known ones)
        self._level_cache: dict[str, int | float] = {}

    async def fetch(self, ids: Collection[str]) -> None:
        missing = [eid for eid in ids if eid not in self.events]
        if not missing:
            return
        answer = self._get_events(missing)
        found = await answer if inspect.isawaitable(answer) else answer
        for eid in missing:
            event = found.get(eid)
            if event is not None:
                self.events[eid] = event

    async def load_parents(self, ids: Collection[str]) -> None:
        """Load `ids` and their auth events (one level), in two batches at most."""
        await self.fetch(ids)
        new = [eid for eid in ids if eid in self.events and eid not in self.auth]
        parents = {eid: self._auth_ids(self.events[eid]) for eid in new}
        await self.fetch({p for ps in parents.values() for p in ps})
        for eid, ps in parents.items():
            self.auth[eid] = [p for p in ps if p in self.events]

    async def load(self, roots: Iterable[str]) -> None:
        """Load `roots` and everything reachable from them through auth events, a layer of
        the graph per batch."""
        seen = set(roots)
        layer = set(seen)
        while layer:
            await self.load_parents(layer)
            layer = {p for eid in layer for p in self.auth.get(eid, ()) if p not in seen}
            seen |= layer

    async def load_power_chains(self, ids: Collection[str]) -> None:
        """Load the chains of power levels events that `ids` cite, for the mainline ordering."""
        seen = set(ids)
        layer = set(seen)
        while layer:
            await self.load_parents(layer)
            nxt = {self._power_levels_parent(eid) for eid in layer if eid in self.events}
            layer = {eid for eid in nxt if eid is not None and eid not in seen}
            seen |= layer

    def _auth_ids(self, event: JsonDict) -> list[str]:
        ids = auth_event_ids(event, self.version)
        if self.version.room_id_is_create_event_hash and event.get("type") != CREATE:
            # v12: the room ID names the create event, which is an auth event of every other
            # event without being listed (rooms/v12.md, auth rule 2).
            room_id = event.get("room_id")
            if isinstance(room_id, str) and room_id.startswith("!"):
                ids = [*ids, "$" + room_id[1:]]
        return ids

    def auth_closure(self, roots: Iterable[str], within: set[str] | None = None) -> set[str]:
        """`roots` and every event in their auth chains; with `within`, only the events
        reached through auth edges between members of `within`."""
        seen = set(roots)
        stack = list(seen)
        while stack:
            for parent in self.auth.get(stack.pop(), ()):
                if parent not in seen and (within is None or parent in within):
                    seen.add(parent)
                    stack.append(parent)
        return seen

    def auth_difference(self, state_sets: Sequence[StateMap]) -> set[str]:
        """∪ Cᵢ − ∩ Cᵢ over the full auth chains of the state sets. A state event counts in
        its own set's chain: this changes nothing, since an event that only its own state
        holds is conflicted anyway."""
        chains = [self.auth_closure(state.values()) for state in state_sets]
        union, common = set(chains[0]), set(chains[0])
        for chain in chains[1:]:
            union |= chain
            common &= chain
        return union - common

    def conflicted_subgraph(self, conflicted: set[str]) -> set[str]:
        """v2.1: events on an auth path from one conflicted event to another, endpoints
        included: reachable backwards from a conflicted event and forwards from one."""
        backwards = self.auth_closure(e for e in conflicted if e in self.events)
        children: dict[str, list[str]] = {}
        for eid in backwards:
            for parent in self.auth.get(eid, ()):
                children.setdefault(parent, []).append(eid)
        forwards = {e for e in conflicted if e in backwards}
        stack = list(forwards)
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in forwards:
                    forwards.add(child)
                    stack.append(child)
        return backwards & forwards

    def sender_power_level(self, event_id: str) -> int | float:
        """The sender's power level according to the event's own auth events (spec, "Reverse
        topological power ordering"); a creator without a power levels event has 100, and in
        v12 every creator has an infinite level."""
        if event_id in self._level_cache:
            return self._level_cache[event_id]
        event = self.events[event_id]
        sender = event.get("sender")
        power_levels = create = None
        for parent in self.auth.get(event_id, ()):
            parent_event = self.events[parent]
            key = (parent_event.get("type"), parent_event.get("state_key"))
            if key == (POWER_LEVELS, ""):
                power_levels = parent_event
            elif key == (CREATE, ""):
                create = parent_event
        level: int | float = 0
        creators = get_creators(self.version, create) if create is not None else []
        if self.version.creators_have_infinite_power and sender in creators:
            level = math.inf
        elif power_levels is not None:
            content = power_levels.get("content")
            content = content if isinstance(content, dict) else {}
            users = content.get("users")
            default = to_level(content.get("users_default"), 0, self.version)
            if isinstance(users, dict) and sender in users:
                level = to_level(users[sender], default, self.version)
            else:
                level = default
        elif sender in creators:
            level = CREATOR_DEFAULT_LEVEL
        self._level_cache[event_id] = level
        return level

    def reverse_topological_power_order(self, ids: set[str]) -> list[str]:
        """Kahn's algorithm over the auth edges inside `ids`, taking the smallest candidate by
        (higher sender power first, then origin_server_ts, then event ID) from a heap."""
        waiting: dict[str, int] = {}
        children: dict[str, list[str]] = {}
        for eid in ids:
            parents = [p for p in set(self.auth.get(eid, ())) if p in ids]
            waiting[eid] = len(parents)
            for parent in parents:
                children.setdefault(parent, []).append(eid)
        heap = [self._power_key(eid) for eid, n in waiting.items() if n == 0]
        heapq.heapify(heap)
        order: list[str] = []
        while heap:
            eid = heapq.heappop(heap)[-1]
            order.append(eid)
            for child in children.get(eid, ()):
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(heap, self._power_key(child))
        return order

    def _power_key(self, event_id: str) -> tuple[int | float, int, str]:
        return (-self.sender_power_level(event_id), _ts(self.events[event_id]), event_id)

    def _power_levels_parent(self, event_id: str) -> str | None:
        for parent in self.auth.get(event_id, ()):
            parent_event = self.events[parent]
            if (parent_event.get("type"), parent_event.get("state_key")) == (POWER_LEVELS, ""):
                return parent
        return None

    def mainline_order(self, ids: list[str], power_levels_id: str | None) -> list[str]:
        """spec, "Mainline ordering" based on `power_levels_id`: events whose power levels
        chain meets the mainline nearer its start come first, then origin_server_ts, then ID.

        Positions are counted from the start of the mainline (its oldest event is 1, an event
        that never meets it 0), the reverse of the spec's count, so that ascending order is
        the spec's order; every power levels event walked is memoised.
        """
        mainline: list[str] = []
        current = power_levels_id
        while current is not None and current in self.events:
            mainline.append(current)
            current = self._power_levels_parent(current)
        depth = {eid: i for i, eid in enumerate(reversed(mainline), start=1)}

        def position(event_id: str) -> int:
            # The event itself is e0, not looked up (spec: "e0 is not included").
            path: list[str] = []
            current = self._power_levels_parent(event_id)
            found = 0
            while current is not None:
                if current in depth:
                    found = depth[current]
                    break
                path.append(current)
                current = self._power_levels_parent(current)
            for eid in path:
                depth[eid] = found
            return found

        keys = {eid: (position(eid), _ts(self.events[eid]), eid) for eid in ids}
        return sorted(ids, key=keys.__getitem__)


def _ts(event: JsonDict) -> int:
    ts = event.get("origin_server_ts")
    return ts if isinstance(ts, int) else 0


async def _iterative_auth_checks(
    graph: _AuthGraph,
    ordered: list[str],
    base: Mapping[StateKey, str],
    rejected: Collection[str],
) -> dict[StateKey, str]:
    """spec, "Iterative auth checks": apply each event that the auth rules allow against the
    state so far; a key the rules need but the state lacks comes from the event's own
    (not rejected) auth events."""
    version = graph.version
    state = dict(base)
    # The state events the rules will read, in one batch; any later value of `state` comes
    # from `ordered`, which is loaded already.
    await graph.fetch(
        {state[k] for e in ordered for k in _auth_keys(version, graph.events[e]) if k in state}
    )
    for event_id in ordered:
        event = graph.events[event_id]
        auth: dict[StateKey, JsonDict] = {}
        for parent in graph.auth.get(event_id, ()):
            if parent in rejected:
                continue
            parent_event = graph.events[parent]
            auth[(str(parent_event.get("type")), str(parent_event.get("state_key")))] = parent_event
        state_key = event.get("state_key")
        for key in _auth_keys(version, event):
            held = state.get(key)
            if held is not None and held not in rejected and held in graph.events:
                auth[key] = graph.events[held]
        # v12: the create event is among `auth` through the room ID (see `_auth_ids`).
        try:
            check_auth(version, event, auth)
        except MatrixError:
            continue
        if isinstance(state_key, str):
            state[(str(event.get("type")), state_key)] = event_id
    return state


def _auth_keys(version: RoomVersion, event: JsonDict) -> list[StateKey]:
    state_key, content = event.get("state_key"), event.get("content")
    return auth_types_for_event(
        version,
        str(event.get("type")),
        state_key if isinstance(state_key, str) else None,
        str(event.get("sender")),
        content if isinstance(content, dict) else {},
    )
