"""The redaction algorithms of room versions 1 to 12 (spec, rooms/fragments/*-redactions.md).

A redacted event keeps what the auth rules and the signatures need: the listed top-level keys
and, per event type, the listed content keys. The same algorithm gives the form that is hashed
and signed, so a redacted event still verifies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from homeserver.core.types import JsonDict
from homeserver.events.room_versions import RedactionRules, RoomVersion

_V1_TOP_LEVEL = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
# v11 stops protecting `origin`, `membership` and `prev_state`.
_V11_TOP_LEVEL = _V1_TOP_LEVEL - {"origin", "membership", "prev_state"}

_V1_POWER_LEVELS = frozenset(
    {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}
)
_V6_CONTENT: dict[str, frozenset[str]] = {
    "m.room.member": frozenset({"membership"}),
    "m.room.create": frozenset({"creator"}),
    "m.room.join_rules": frozenset({"join_rule"}),
    "m.room.power_levels": _V1_POWER_LEVELS,
    "m.room.history_visibility": frozenset({"history_visibility"}),
}
# v1-v5 also keep the aliases of m.room.aliases; v6 took their meaning away.
_V1_CONTENT = {**_V6_CONTENT, "m.room.aliases": frozenset({"aliases"})}
# v8: restricted join rules keep their `allow` list.
_V8_CONTENT = {**_V6_CONTENT, "m.room.join_rules": frozenset({"join_rule", "allow"})}
# v9: a restricted join keeps the user who authorised it.
_V9_CONTENT = {
    **_V8_CONTENT,
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
}
# v11: m.room.create keeps all its content (handled in `_redact`), power levels keep `invite`,
# m.room.redaction keeps `redacts` (now in content).
_V11_CONTENT = {
    **{k: v for k, v in _V9_CONTENT.items() if k != "m.room.create"},
    "m.room.power_levels": _V1_POWER_LEVELS | {"invite"},
    "m.room.redaction": frozenset({"redacts"}),
}

TOP_LEVEL_KEYS: dict[RedactionRules, frozenset[str]] = {
    RedactionRules.V1: _V1_TOP_LEVEL,
    RedactionRules.V6: _V1_TOP_LEVEL,
    RedactionRules.V8: _V1_TOP_LEVEL,
    RedactionRules.V9: _V1_TOP_LEVEL,
    RedactionRules.V11: _V11_TOP_LEVEL,
}
CONTENT_KEYS: dict[RedactionRules, dict[str, frozenset[str]]] = {
    RedactionRules.V1: _V1_CONTENT,
    RedactionRules.V6: _V6_CONTENT,
    RedactionRules.V8: _V8_CONTENT,
    RedactionRules.V9: _V9_CONTENT,
    RedactionRules.V11: _V11_CONTENT,
}


def redact(event: JsonDict, version: RoomVersion) -> JsonDict:
    """Apply the room version's redaction algorithm; returns a new dict, `event` is untouched."""
    return redact_with(event, version, copy.deepcopy)


def redact_with(event: JsonDict, version: RoomVersion, clone: Callable[[Any], Any]) -> JsonDict:
    """``redact`` with the kept values passed through ``clone``: a deep copy for a redacted
    event that lives on, as they are for one that is only encoded (hashing, signing)."""
    rules = version.redaction_rules
    redacted = {k: clone(v) for k, v in event.items() if k in TOP_LEVEL_KEYS[rules]}
    if "content" not in event:
        return redacted
    content = event["content"] if isinstance(event["content"], dict) else {}
    event_type = event.get("type")
    if rules is RedactionRules.V11 and event_type == "m.room.create":
        new_content = clone(content)
    else:
        allowed = (
            CONTENT_KEYS[rules].get(event_type, frozenset())
            if isinstance(event_type, str)
            else frozenset()
        )
        new_content = {k: clone(v) for k, v in content.items() if k in allowed}
        third_party_invite = content.get("third_party_invite")
        if (
            rules is RedactionRules.V11
            and event_type == "m.room.member"
            and isinstance(third_party_invite, dict)
        ):
            # v11: "it allows the `signed` key of the `third_party_invite` key", so that
            # a redacted third-party invite can still be authorised.
            new_content["third_party_invite"] = (
                {"signed": clone(third_party_invite["signed"])}
                if "signed" in third_party_invite
                else {}
            )
    redacted["content"] = new_content
    return redacted
