"""The room versions this server supports, as flags the event code branches on.

Only the stable versions 10, 11 and 12 are supported (spec, "Room Versions"); versions 1-9 carry
string power levels, older event ID formats and older redaction rules that we do not implement.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RedactionRules(StrEnum):
    """Which redaction algorithm applies, named after the spec fragment that defines it."""

    V9 = "v9"  # rooms/fragments/v9-redactions.md (used by room versions 9 and 10)
    V11 = "v11"  # rooms/fragments/v11-redactions.md (room versions 11 and 12)


class StateResolution(StrEnum):
    """Which state resolution algorithm applies."""

    V2 = "v2"  # rooms/fragments/v2-state-res.md
    V2_1 = "v2.1"  # room version 12: iterative auth checks start from an empty state map


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    redaction_rules: RedactionRules
    state_resolution: StateResolution
    # v10 only: `m.room.create` content carries `creator`; from v11 the `sender` is the creator.
    creator_in_content: bool
    # v11+: `m.room.redaction` carries `redacts` in `content`, not at the top level.
    redacts_in_content: bool
    # v12: the room ID is `!` + the create event's reference hash, so the create event has no
    # `room_id` and is never listed in `auth_events`.
    room_id_is_create_event_hash: bool
    # v12: the create event's sender and `additional_creators` have infinite power level and
    # may not appear in `users` of `m.room.power_levels`.
    creators_have_infinite_power: bool
    # Join rules the auth rules accept (knock from v7, restricted from v8, knock_restricted v10).
    knock_join_rule: bool
    restricted_join_rule: bool
    knock_restricted_join_rule: bool
    # v6+: events must be canonical JSON (integers in [-(2**53)+1, 2**53-1], no floats).
    strict_canonical_json: bool
    # v10+: power level values must be integers, never strings.
    integer_power_levels: bool
    # Whether the capabilities endpoint lists this version as "stable".
    stable: bool = True

    @property
    def create_event_in_auth_events(self) -> bool:
        return not self.room_id_is_create_event_hash


ROOM_VERSION_10 = RoomVersion(
    identifier="10",
    redaction_rules=RedactionRules.V9,
    state_resolution=StateResolution.V2,
    creator_in_content=True,
    redacts_in_content=False,
    room_id_is_create_event_hash=False,
    creators_have_infinite_power=False,
    knock_join_rule=True,
    restricted_join_rule=True,
    knock_restricted_join_rule=True,
    strict_canonical_json=True,
    integer_power_levels=True,
)

ROOM_VERSION_11 = RoomVersion(
    identifier="11",
    redaction_rules=RedactionRules.V11,
    state_resolution=StateResolution.V2,
    creator_in_content=False,
    redacts_in_content=True,
    room_id_is_create_event_hash=False,
    creators_have_infinite_power=False,
    knock_join_rule=True,
    restricted_join_rule=True,
    knock_restricted_join_rule=True,
    strict_canonical_json=True,
    integer_power_levels=True,
)

ROOM_VERSION_12 = RoomVersion(
    identifier="12",
    redaction_rules=RedactionRules.V11,
    state_resolution=StateResolution.V2_1,
    creator_in_content=False,
    redacts_in_content=True,
    room_id_is_create_event_hash=True,
    creators_have_infinite_power=True,
    knock_join_rule=True,
    restricted_join_rule=True,
    knock_restricted_join_rule=True,
    strict_canonical_json=True,
    integer_power_levels=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v for v in (ROOM_VERSION_10, ROOM_VERSION_11, ROOM_VERSION_12)
}

DEFAULT_ROOM_VERSION = "12"
