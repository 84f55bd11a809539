"""Power levels: who may do what, per room version (m.room.power_levels, "Definitions").

Room versions 1-9 accept power levels written as strings (`"50"`, `" +050 "`), and 1-5 also as
floats, which are truncated (rooms/fragments/v1-stringy-power-levels.md, v1-floaty-power-levels
.md). From v10 only integers count. A value that is not a level in the room's version is treated
as absent, so the default applies.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeGuard

from homeserver.core.jsonutil import MAX_SAFE_INT
from homeserver.core.types import JsonDict
from homeserver.events.room_versions import RoomVersion

# spec, server-server API "Definitions" and m.room.power_levels: the levels used when the
# power levels event, or the key in it, is absent.
DEFAULT_LEVELS: dict[str, int] = {
    "invite": 0,
    "kick": 50,
    "ban": 50,
    "redact": 50,
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
}
# m.room.power_levels `notifications`: `room` (an @room mention) defaults to 50.
DEFAULT_NOTIFICATION_LEVEL = 50
# m.room.power_levels: without a power levels event the creator has 100 (v1-v11).
CREATOR_DEFAULT_LEVEL = 100

# v1-stringy-power-levels: optional whitespace, one sign, base-10 digits (leading zeroes ok).
_STRINGY_LEVEL = re.compile(r"\s*[+-]?[0-9]+\s*")


def is_int(value: object) -> TypeGuard[int]:
    """A canonical JSON integer; `True` is a JSON boolean, not an integer."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and -MAX_SAFE_INT <= value <= MAX_SAFE_INT
    )


def parse_level(value: object, version: RoomVersion | None = None) -> int | None:
    """The level `value` stands for in `version`, or None when it is not one.

    `version` None means the v10+ rules (integers only), which every caller that predates
    older room versions relies on.
    """
    if is_int(value):
        return value
    if version is None or version.integer_power_levels:
        return None
    if isinstance(value, str) and _STRINGY_LEVEL.fullmatch(value):
        return int(value)
    if isinstance(value, float) and not version.strict_canonical_json and math.isfinite(value):
        return int(value)
    return None


def to_level(value: object, default: int, version: RoomVersion | None = None) -> int:
    level = parse_level(value, version)
    return default if level is None else level


def _content(event: JsonDict | None) -> JsonDict:
    content = event.get("content") if event is not None else None
    return content if isinstance(content, dict) else {}


def domain_of(identifier: object) -> str | None:
    if not isinstance(identifier, str) or ":" not in identifier:
        return None
    return identifier.partition(":")[2]


def get_creators(version: RoomVersion, create_event: JsonDict) -> list[str]:
    """The room creators: `content.creator` (v1-v10), the `sender` (v11+), plus, in v12, any
    `additional_creators` of the create event."""
    content = _content(create_event)
    if version.creator_in_content:
        creator = content.get("creator")
        return [creator] if isinstance(creator, str) else []
    creators: list[str] = []
    sender = create_event.get("sender")
    if isinstance(sender, str):
        creators.append(sender)
    additional = content.get("additional_creators")
    if version.creators_have_infinite_power and isinstance(additional, list):
        creators.extend(u for u in additional if isinstance(u, str) and u not in creators)
    return creators


def is_creator(version: RoomVersion, user_id: str, create_event: JsonDict | None) -> bool:
    return create_event is not None and user_id in get_creators(version, create_event)


def get_user_power_level(
    version: RoomVersion,
    user_id: str,
    power_levels_content: JsonDict | None,
    create_event: JsonDict | None,
) -> int | float:
    """The user's power level; `math.inf` for room creators in room version 12.

    `math.inf` compares above every integer, which is exactly the v12 rule ("infinitely high");
    it must never be serialised: clients are shown the creators, not a number.
    """
    if version.creators_have_infinite_power and is_creator(version, user_id, create_event):
        return math.inf
    if power_levels_content is not None:
        users = power_levels_content.get("users")
        default = to_level(
            power_levels_content.get("users_default"), DEFAULT_LEVELS["users_default"], version
        )
        if isinstance(users, dict) and user_id in users:
            return to_level(users[user_id], default, version)
        return default
    if is_creator(version, user_id, create_event):
        return CREATOR_DEFAULT_LEVEL
    return DEFAULT_LEVELS["users_default"]


def get_named_level(
    power_levels_content: JsonDict | None,
    name: str,
    default: int | None = None,
    version: RoomVersion | None = None,
) -> int:
    """`invite`, `kick`, `ban`, `redact`, `users_default`, `events_default`, `state_default`,
    with the spec's default when the event or the key is absent."""
    if default is None:
        default = DEFAULT_LEVELS[name]
    if power_levels_content is None:
        return default
    return to_level(power_levels_content.get(name), default, version)


def get_send_level(
    version: RoomVersion, event_type: str, is_state: bool, power_levels_content: JsonDict | None
) -> int:
    """The *required power level* for an event type (server-server API "Definitions")."""
    if power_levels_content is not None:
        events = power_levels_content.get("events")
        if isinstance(events, dict):
            level = parse_level(events.get(event_type), version)
            if level is not None:
                return level
    return get_named_level(
        power_levels_content,
        "state_default" if is_state else "events_default",
        version=version,
    )


def get_notification_level(
    power_levels_content: JsonDict | None, key: str = "room", version: RoomVersion | None = None
) -> int:
    """The level needed to trigger a notification of kind `key` (`room`: @room mentions)."""
    notifications = (power_levels_content or {}).get("notifications")
    value = notifications.get(key) if isinstance(notifications, dict) else None
    return to_level(value, DEFAULT_NOTIFICATION_LEVEL, version)


def can_redact(
    version: RoomVersion,
    redaction_sender: str,
    original_sender: str,
    power_levels_content: JsonDict | None,
    create_event: JsonDict | None,
) -> bool:
    """Whether a redaction that passed the auth rules is applied (rooms/fragments/
    v3-handling-redactions.md): the sender has the redact level, or the same server sent both.
    """
    if has_redact_level(version, redaction_sender, power_levels_content, create_event):
        return True
    return domain_of(redaction_sender) == domain_of(original_sender)


def has_redact_level(
    version: RoomVersion,
    user_id: str,
    power_levels_content: JsonDict | None,
    create_event: JsonDict | None,
) -> bool:
    """Whether the user may redact anyone's event (the `redact` level)."""
    level = get_user_power_level(version, user_id, power_levels_content, create_event)
    return level >= get_named_level(power_levels_content, "redact", version=version)


def client_can_redact(
    version: RoomVersion,
    user_id: str,
    original_sender: str,
    power_levels_content: JsonDict | None,
    create_event: JsonDict | None,
) -> bool:
    """The stricter check for a local user (m.room.power_levels description): their own
    events, or another user's with the redact level. Sharing a server is not enough here."""
    if user_id == original_sender:
        return True
    level = get_user_power_level(version, user_id, power_levels_content, create_event)
    return level >= get_named_level(power_levels_content, "redact", version=version)


def dict_or_empty(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
