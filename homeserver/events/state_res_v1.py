"""State resolution for room version 1 (rooms/v1.md "State resolution"), for joining v1 rooms.

The algorithm is known to reset state (the spec's own warning); it is here so that the state a
v1 room's servers agree on can be computed, not for new rooms. The spec's "conflict" is two
states holding different events for one key: a key that only some states hold is not one, so
it is carried over as is. The spec sorts "all" member events into one list; the conflicts are
resolved per key here, each key on its own, as the servers that run v1 rooms do.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Collection, Mapping, Sequence

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
from homeserver.events.room_versions import RoomVersion
from homeserver.events.state_res import EventSource, StateMap


def _sha1(event_id: str) -> bytes:
    return hashlib.sha1(event_id.encode(), usedforsecurity=False).digest()


def _depth(event: JsonDict) -> int:
    depth = event.get("depth")
    return depth if isinstance(depth, int) else 0


async def resolve_state_v1(
    version: RoomVersion, state_sets: Sequence[StateMap], get_events: EventSource
) -> dict[StateKey, str]:
    resolved: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    for state in state_sets:
        for key, event_id in state.items():
            if key in conflicted:
                conflicted[key].add(event_id)
            elif resolved.get(key, event_id) != event_id:
                conflicted[key] = {resolved.pop(key), event_id}
            else:
                resolved[key] = event_id
    if not conflicted:
        return resolved

    wanted = set(resolved.values()) | {e for ids in conflicted.values() for e in ids}
    answer = get_events(wanted)
    loaded: Mapping[str, JsonDict] = await answer if inspect.isawaitable(answer) else answer
    events = dict(loaded)

    def allowed(event: JsonDict) -> bool:
        state_key = event.get("state_key")
        content = event.get("content")
        keys = auth_types_for_event(
            version,
            str(event.get("type")),
            state_key if isinstance(state_key, str) else None,
            str(event.get("sender")),
            content if isinstance(content, dict) else {},
        )
        auth = {k: events[resolved[k]] for k in keys if resolved.get(k) in events}
        try:
            check_auth(version, event, auth)
        except MatrixError:
            return False
        return True

    def known(ids: Collection[str]) -> list[JsonDict]:
        return [events[e] for e in ids if e in events]

    # Power levels, then join rules, then memberships: ascending depth, descending sha1(ID);
    # the first is taken, each next one while the auth rules allow it in the state so far.
    for event_type in (POWER_LEVELS, JOIN_RULES, MEMBER):
        for key in sorted(k for k in conflicted if k[0] == event_type):
            ids = sorted(
                (e for e in conflicted.pop(key) if e in events),
                key=lambda e: (_depth(events[e]), [-b for b in _sha1(e)]),
            )
            if not ids:
                continue
            resolved[key] = ids[0]
            for event_id in ids[1:]:
                if not allowed(events[event_id]):
                    break
                resolved[key] = event_id
    # Every other key: the deepest event with the lowest sha1(ID) that passes auth in the
    # state so far; when none passes, the shallowest candidate, as v1 servers do.
    for key in sorted(conflicted):
        if key == (CREATE, ""):
            continue
        ids = sorted(
            (e for e in conflicted[key] if e in events),
            key=lambda e: (-_depth(events[e]), _sha1(e)),
        )
        chosen = next((e for e in ids if allowed(events[e])), ids[-1] if ids else None)
        if chosen is not None:
            resolved[key] = chosen
    return resolved
