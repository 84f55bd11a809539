"""Every stable room version, 1 to 12, as flags the event code branches on.

`ROOM_VERSIONS` is the spec's table: the event layer (formats, redaction, auth rules, state
resolution) handles all of it, so that rooms that already exist on the network can be joined.
`KNOWN_ROOM_VERSIONS` are the versions this server creates rooms in, sends events to and
advertises in `/capabilities`: every stable one, each sent in its own format (v1-v2 with the
event ID in the event, v3 and later with reference hashes). New rooms are v12 unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class EventFormat(IntEnum):
    """How an event names itself and its parents (spec, server-server API "PDU")."""

    # v1-v2: `event_id` is in the event, `$opaque:domain`; `prev_events` and `auth_events`
    # are `[event_id, {"sha256": ...}]` pairs.
    V1 = 1
    # v3: the ID is `$` + the reference hash in standard unpadded base64; lists of IDs.
    V3 = 3
    # v4+: as v3 in URL-safe unpadded base64 (rooms/fragments/v4-event-ids.md).
    V4 = 4


class RedactionRules(StrEnum):
    """Which redaction algorithm applies, named after the spec fragment that defines it."""

    V1 = "v1"  # rooms/fragments/v1-redactions.md (room versions 1-5): keeps m.room.aliases
    V6 = "v6"  # rooms/fragments/v6-redactions.md (6 and 7): aliases lose their protection
    V8 = "v8"  # rooms/v8.md: m.room.join_rules also keeps `allow`
    V9 = "v9"  # rooms/fragments/v9-redactions.md (9 and 10): + join_authorised_via_users_server
    V11 = "v11"  # rooms/fragments/v11-redactions.md (11 and 12)


class StateResolution(StrEnum):
    """Which state resolution algorithm applies."""

    V1 = "v1"  # room version 1 (rooms/v1.md "State resolution")
    V2 = "v2"  # rooms/fragments/v2-state-res.md
    V2_1 = "v2.1"  # room version 12: empty starting state plus the conflicted state subgraph


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    event_format: EventFormat
    redaction_rules: RedactionRules
    state_resolution: StateResolution
    # v1-v10: `m.room.create` content carries `creator`; from v11 the `sender` is the creator.
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
    # v10+: power level values must be integers; before, "50" (v1-v9) and 50.5 (v1-v5) count.
    integer_power_levels: bool
    # v1-v5: the auth rules special-case m.room.aliases (sender's domain is the state key).
    special_case_aliases_auth: bool
    # v1-v2: the auth rules check m.room.redaction against the redact level or the event IDs'
    # domains; from v3 that check moves to "Handling redactions".
    redaction_in_auth_rules: bool
    # v6+: changes to `notifications` in m.room.power_levels are checked like `events`.
    limit_notifications_power_levels: bool
    # v5+: signing keys must be valid (`valid_until_ts`) at the event's origin_server_ts.
    enforce_key_validity: bool
    # Whether the capabilities endpoint lists this version as "stable".
    stable: bool = True

    @property
    def create_event_in_auth_events(self) -> bool:
        return not self.room_id_is_create_event_hash

    @property
    def event_id_in_event(self) -> bool:
        return self.event_format is EventFormat.V1


def _version(number: int) -> RoomVersion:
    """The flags of stable room version `number`, from the "changed in" notes of each version."""
    if number <= 5:
        redaction = RedactionRules.V1
    elif number <= 7:
        redaction = RedactionRules.V6
    elif number == 8:
        redaction = RedactionRules.V8
    elif number <= 10:
        redaction = RedactionRules.V9
    else:
        redaction = RedactionRules.V11
    if number == 1:
        state_res = StateResolution.V1
    elif number <= 11:
        state_res = StateResolution.V2
    else:
        state_res = StateResolution.V2_1
    if number <= 2:
        event_format = EventFormat.V1
    elif number == 3:
        event_format = EventFormat.V3
    else:
        event_format = EventFormat.V4
    return RoomVersion(
        identifier=str(number),
        event_format=event_format,
        redaction_rules=redaction,
        state_resolution=state_res,
        creator_in_content=number <= 10,
        redacts_in_content=number >= 11,
        room_id_is_create_event_hash=number >= 12,
        creators_have_infinite_power=number >= 12,
        knock_join_rule=number >= 7,
        restricted_join_rule=number >= 8,
        knock_restricted_join_rule=number >= 10,
        strict_canonical_json=number >= 6,
        integer_power_levels=number >= 10,
        special_case_aliases_auth=number <= 5,
        redaction_in_auth_rules=number <= 2,
        limit_notifications_power_levels=number >= 6,
        enforce_key_validity=number >= 5,
    )


ROOM_VERSIONS: dict[str, RoomVersion] = {str(n): _version(n) for n in range(1, 13)}

ROOM_VERSION_10 = ROOM_VERSIONS["10"]
ROOM_VERSION_11 = ROOM_VERSIONS["11"]
ROOM_VERSION_12 = ROOM_VERSIONS["12"]

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    identifier: version for identifier, version in ROOM_VERSIONS.items() if version.stable
}

DEFAULT_ROOM_VERSION = "12"
