"""The state resolver of the room services: each room version's algorithm (issue 17).

Room version 1 resolves by the v1 algorithm, which we keep for joining old rooms only; rooms
of versions 2 to 11 by state resolution v2, and version 12 by v2.1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from homeserver.core.types import JsonDict
from homeserver.events.auth import StateKey
from homeserver.events.room_versions import RoomVersion, StateResolution
from homeserver.events.state_res import StateMap, resolve_state
from homeserver.events.state_res_v1 import resolve_state_v1


async def resolve_room_state(
    version: RoomVersion,
    state_sets: Sequence[StateMap],
    get_events: Callable[[Collection[str]], Awaitable[Mapping[str, JsonDict]]],
) -> dict[StateKey, str]:
    """The resolved state of ``state_sets``, loading the events it needs through
    ``get_events`` (redacted events in their redacted form, as every server has them)."""
    if version.state_resolution is StateResolution.V1:
        return await resolve_state_v1(version, state_sets, get_events)
    return await resolve_state(version, state_sets, get_events)
