"""The authorisation rules of room versions 10, 11 and 12, and the power level helpers.

Rule numbers in comments follow the room version 11 text (rooms/v11.md "Authorisation rules");
room version 12 (rooms/v12.md) inserts a rule 2 (the room ID names the create event), so its
rules 3-11 are v11's 2-10. "State" below is the `auth_events` mapping: the event's own auth
events, the state before it, or the current state, depending on which check the caller runs
(server-server API "Checks performed on receipt of a PDU").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from unpaddedbase64 import decode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.jsonutil import MAX_SAFE_INT
from homeserver.core.types import JsonDict
from homeserver.events.format import canonical_json, compute_event_id
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"

StateKey = tuple[str, str]

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
# m.room.power_levels: without a power levels event the creator has 100 (v10/v11).
CREATOR_DEFAULT_LEVEL = 100

# Rule 9.1 / 9.5: the scalar properties of m.room.power_levels.
_SCALAR_LEVELS = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)


def _deny(reason: str) -> MatrixError:
    return MatrixError(Codes.FORBIDDEN, reason)


def _content(event: JsonDict | None) -> JsonDict:
    content = event.get("content") if event is not None else None
    return content if isinstance(content, dict) else {}


def _domain(identifier: object) -> str | None:
    if not isinstance(identifier, str) or ":" not in identifier:
        return None
    return identifier.partition(":")[2]


def _is_int(value: object) -> TypeGuard[int]:
    """A canonical JSON integer; `True` is a JSON boolean, not an integer."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and -MAX_SAFE_INT <= value <= MAX_SAFE_INT
    )


def _to_level(value: object, default: int) -> int:
    # Accepted v10+ power levels are integers (rule 9.1); anything else is treated as unset.
    return value if _is_int(value) else default


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_user_id(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        UserID.parse(value)
    except MatrixError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Helpers for the room service


def get_creators(version: RoomVersion, create_event: JsonDict) -> list[str]:
    """The room creators: `content.creator` (v10), the `sender` (v11), plus, in v12, any
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
        if isinstance(users, dict) and user_id in users:
            return _to_level(users[user_id], DEFAULT_LEVELS["users_default"])
        return _to_level(power_levels_content.get("users_default"), DEFAULT_LEVELS["users_default"])
    if is_creator(version, user_id, create_event):
        return CREATOR_DEFAULT_LEVEL
    return DEFAULT_LEVELS["users_default"]


def get_named_level(
    power_levels_content: JsonDict | None, name: str, default: int | None = None
) -> int:
    """`invite`, `kick`, `ban`, `redact`, `users_default`, `events_default`, `state_default`,
    with the spec's default when the event or the key is absent."""
    if default is None:
        default = DEFAULT_LEVELS[name]
    if power_levels_content is None:
        return default
    return _to_level(power_levels_content.get(name), default)


def get_send_level(
    version: RoomVersion, event_type: str, is_state: bool, power_levels_content: JsonDict | None
) -> int:
    """The *required power level* for an event type (server-server API "Definitions")."""
    if power_levels_content is not None:
        events = power_levels_content.get("events")
        if isinstance(events, dict) and _is_int(events.get(event_type)):
            return int(events[event_type])
    return get_named_level(power_levels_content, "state_default" if is_state else "events_default")


def get_notification_level(power_levels_content: JsonDict | None, key: str = "room") -> int:
    """The level needed to trigger a notification of kind `key` (`room`: @room mentions)."""
    notifications = (power_levels_content or {}).get("notifications")
    value = notifications.get(key) if isinstance(notifications, dict) else None
    return _to_level(value, DEFAULT_NOTIFICATION_LEVEL)


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
    level = get_user_power_level(version, redaction_sender, power_levels_content, create_event)
    if level >= get_named_level(power_levels_content, "redact"):
        return True
    return _domain(redaction_sender) == _domain(original_sender)


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
    return level >= get_named_level(power_levels_content, "redact")


# ---------------------------------------------------------------------------------------------
# Auth events selection


def auth_types_for_event(
    version: RoomVersion, event_type: str, state_key: str | None, sender: str, content: JsonDict
) -> list[StateKey]:
    """The state the event's `auth_events` must cite (server-server API "Auth events
    selection"), in order, without duplicates."""
    if event_type == CREATE:
        return []
    keys: list[StateKey] = []
    if version.create_event_in_auth_events:  # v12: the room ID already names the create event
        keys.append((CREATE, ""))
    keys += [(POWER_LEVELS, ""), (MEMBER, sender)]
    if event_type == MEMBER and state_key is not None:
        membership = content.get("membership")
        keys.append((MEMBER, state_key))
        if membership in ("join", "invite", "knock"):
            keys.append((JOIN_RULES, ""))
        third_party_invite = content.get("third_party_invite")
        if membership == "invite" and isinstance(third_party_invite, dict):
            signed = third_party_invite.get("signed")
            if isinstance(signed, dict) and isinstance(signed.get("token"), str):
                keys.append((THIRD_PARTY_INVITE, signed["token"]))
        authoriser = content.get("join_authorised_via_users_server")
        if membership == "join" and version.restricted_join_rule and isinstance(authoriser, str):
            keys.append((MEMBER, authoriser))
    return list(dict.fromkeys(keys))


def check_auth_events_selection(
    version: RoomVersion, event: JsonDict, auth_events: Sequence[JsonDict]
) -> dict[StateKey, JsonDict]:
    """Rule 2 (v12: 3) on the event's own `auth_events`; returns them keyed for `check_auth`.

    Whether an auth event was itself rejected (rule 2.3) is for the caller, who knows.
    """
    if event.get("type") == CREATE:
        if auth_events:
            raise _deny("The m.room.create event must have no auth events")
        return {}
    allowed = set(
        auth_types_for_event(
            version,
            str(event.get("type")),
            event.get("state_key"),
            str(event.get("sender")),
            _content(event),
        )
    )
    keyed: dict[StateKey, JsonDict] = {}
    for auth_event in auth_events:
        auth_type, state_key = auth_event.get("type"), auth_event.get("state_key")
        if not isinstance(auth_type, str) or not isinstance(state_key, str):
            raise _deny("An auth event is not a state event")
        key = (auth_type, state_key)
        if key in keyed:  # rule 2.1
            raise _deny(f"Duplicate auth events for {key}")
        if key not in allowed:  # rule 2.2 (v12: the create event is never selected)
            raise _deny(f"Auth event {key} is not one the auth events selection picks")
        if auth_event.get("room_id") != event.get("room_id"):  # rule 2.5
            raise _deny("An auth event belongs to a different room")
        keyed[key] = auth_event
    if version.create_event_in_auth_events and (CREATE, "") not in keyed:  # rule 2.4
        raise _deny("The auth events do not include the m.room.create event")
    return keyed


# ---------------------------------------------------------------------------------------------
# The authorisation rules


def check_auth(
    version: RoomVersion,
    event: JsonDict,
    auth_events: Mapping[StateKey, JsonDict],
    create_event: JsonDict | None = None,
) -> None:
    """Raise `M_FORBIDDEN` naming the failed rule unless `event` is allowed given the state.

    `auth_events` may hold more state than the selection; only the selected keys are read.
    In v12 the create event is not among them and must be passed as `create_event`.
    """
    event_type, sender = event.get("type"), event.get("sender")
    if not isinstance(event_type, str) or not isinstance(sender, str):
        raise _deny("The event has no type or sender")
    if event_type == CREATE:
        _check_create(version, event)
        return

    if create_event is None:
        create_event = auth_events.get((CREATE, ""))
    if create_event is None:  # rule 2.4 (v12: rule 2)
        raise _deny("No m.room.create event in the room state")
    room_id = event.get("room_id")
    if version.room_id_is_create_event_hash:
        # v12 rule 2: the room ID is the create event's ID with `!` instead of `$`.
        if room_id != "!" + compute_event_id(create_event, version)[1:]:
            raise _deny("The room ID is not derived from the m.room.create event")
    elif create_event.get("room_id") != room_id:
        raise _deny("The m.room.create event belongs to a different room")
    state_key = event.get("state_key")
    content = _content(event)
    for key in auth_types_for_event(
        version, event_type, state_key if isinstance(state_key, str) else None, sender, content
    ):
        auth_event = auth_events.get(key)
        if auth_event is not None and auth_event.get("room_id") != room_id:  # rule 2.5
            raise _deny(f"Auth event {key} belongs to a different room")

    # Rule 3: m.federate false keeps other servers out.
    if _content(create_event).get("m.federate") is False and _domain(sender) != _domain(
        create_event.get("sender")
    ):
        raise _deny("This room does not federate with the sender's server")

    power_levels = _power_levels_content(auth_events)
    sender_level = get_user_power_level(version, sender, power_levels, create_event)

    if event_type == MEMBER:  # rule 4
        _check_member(version, event, auth_events, create_event, power_levels)
        return

    if _membership(auth_events, sender) != "join":  # rule 5
        raise _deny("The sender is not joined to the room")

    if event_type == THIRD_PARTY_INVITE:  # rule 6
        if sender_level >= get_named_level(power_levels, "invite"):
            return
        raise _deny("The sender's power level is below the invite level")

    # Rule 7: the event type's required power level.
    if sender_level < get_send_level(version, event_type, state_key is not None, power_levels):
        raise _deny(f"The sender's power level is too low to send {event_type} events")

    # Rule 8: a state key that is a user ID can only be set by that user.
    if isinstance(state_key, str) and state_key.startswith("@") and state_key != sender:
        raise _deny("A state key starting with '@' must be the sender's user ID")

    if event_type == POWER_LEVELS:  # rule 9
        _check_power_levels(version, event, auth_events, create_event, sender_level)


def _power_levels_content(auth_events: Mapping[StateKey, JsonDict]) -> JsonDict | None:
    event = auth_events.get((POWER_LEVELS, ""))
    return _content(event) if event is not None else None


def _membership(auth_events: Mapping[StateKey, JsonDict], user_id: str) -> str | None:
    event = auth_events.get((MEMBER, user_id))
    membership = _content(event).get("membership")
    return membership if isinstance(membership, str) else None


def _join_rule(version: RoomVersion, auth_events: Mapping[StateKey, JsonDict]) -> str | None:
    event = auth_events.get((JOIN_RULES, ""))
    if event is None:
        # No join rules event: treated as `invite`, the m.room.join_rules default that other
        # servers apply, so an invited user of such a room can still join.
        return "invite"
    rule = _content(event).get("join_rule")
    supported = {
        "public": True,
        "invite": True,
        "knock": version.knock_join_rule,
        "restricted": version.restricted_join_rule,
        "knock_restricted": version.knock_restricted_join_rule,
    }
    return rule if isinstance(rule, str) and supported.get(rule, False) else None


def _check_create(version: RoomVersion, event: JsonDict) -> None:
    """Rule 1."""
    if event.get("prev_events"):  # 1.1
        raise _deny("The m.room.create event must have no prev_events")
    if version.room_id_is_create_event_hash:
        if "room_id" in event:  # v12 1.2: the room ID is derived from this event
            raise _deny("The m.room.create event must not have a room_id")
    elif _domain(event.get("room_id")) != _domain(event.get("sender")):  # 1.2
        raise _deny("The room ID's server does not match the sender's")
    content = _content(event)
    room_version = content.get("room_version")
    if "room_version" in content and not (
        isinstance(room_version, str) and room_version in KNOWN_ROOM_VERSIONS
    ):  # 1.3
        raise _deny("Unknown room version in m.room.create")
    if version.creator_in_content and "creator" not in content:  # v10 1.4
        raise _deny("The m.room.create content has no creator")
    if version.creators_have_infinite_power and "additional_creators" in content:  # v12 1.4
        additional = content["additional_creators"]
        if not isinstance(additional, list) or not all(_is_user_id(u) for u in additional):
            raise _deny("additional_creators must be a list of valid user IDs")


def _has_signature_from(event: JsonDict, server_name: str | None) -> bool:
    signatures = event.get("signatures")
    if not isinstance(signatures, dict) or server_name is None:
        return False
    server_signatures = signatures.get(server_name)
    return isinstance(server_signatures, dict) and any(
        isinstance(k, str) and k.startswith("ed25519:") for k in server_signatures
    )


def _check_member(
    version: RoomVersion,
    event: JsonDict,
    auth_events: Mapping[StateKey, JsonDict],
    create_event: JsonDict,
    power_levels: JsonDict | None,
) -> None:
    """Rule 4 (v12: 5)."""
    sender = str(event.get("sender"))
    target = event.get("state_key")
    content = _content(event)
    membership = content.get("membership")
    if not isinstance(target, str) or not isinstance(membership, str):  # 4.1
        raise _deny("A membership event needs a state_key and content.membership")

    authoriser = content.get("join_authorised_via_users_server")
    if "join_authorised_via_users_server" in content:  # 4.2
        if not _is_user_id(authoriser):
            raise _deny("join_authorised_via_users_server is not a valid user ID")
        # "Validly signed" is reduced to "carries a signature": verifying it needs that
        # server's keys, which the federation layer checks on receipt like any signature.
        if not _has_signature_from(event, _domain(authoriser)):
            raise _deny("The event is not signed by the join_authorised_via_users_server server")

    def level(user_id: str) -> int | float:
        return get_user_power_level(version, user_id, power_levels, create_event)

    sender_membership = _membership(auth_events, sender)
    target_membership = _membership(auth_events, target)
    if membership == "join":
        _check_join(version, event, auth_events, create_event, power_levels)
        return
    if membership == "invite":  # 4.4
        third_party_invite = content.get("third_party_invite")
        if "third_party_invite" in content:  # 4.4.1
            if target_membership == "ban":
                raise _deny("The invited user is banned")
            _check_third_party_invite(event, third_party_invite, auth_events)
            return
        if sender_membership != "join":
            raise _deny("The sender is not joined to the room")
        if target_membership in ("join", "ban"):
            raise _deny(f"The invited user's membership is {target_membership}")
        if level(sender) >= get_named_level(power_levels, "invite"):
            return
        raise _deny("The sender's power level is below the invite level")
    if membership == "leave":  # 4.5
        if sender == target:
            if target_membership in ("invite", "join", "knock"):
                return
            raise _deny("Cannot leave a room you are not invited to, joined to or knocking on")
        if sender_membership != "join":
            raise _deny("The sender is not joined to the room")
        if target_membership == "ban" and level(sender) < get_named_level(power_levels, "ban"):
            raise _deny("The sender's power level is below the ban level: cannot unban")
        if level(sender) >= get_named_level(power_levels, "kick") and level(target) < level(sender):
            return
        raise _deny("The sender's power level is too low to kick this user")
    if membership == "ban":  # 4.6
        if sender_membership != "join":
            raise _deny("The sender is not joined to the room")
        if level(sender) >= get_named_level(power_levels, "ban") and level(target) < level(sender):
            return
        raise _deny("The sender's power level is too low to ban this user")
    if membership == "knock":  # 4.7
        if _join_rule(version, auth_events) not in ("knock", "knock_restricted"):
            raise _deny("The room's join rule does not allow knocking")
        if sender != target:
            raise _deny("Cannot knock on behalf of another user")
        if sender_membership not in ("ban", "invite", "join"):
            return
        raise _deny(f"Cannot knock: membership is already {sender_membership}")
    raise _deny(f"Unknown membership {membership!r}")  # 4.8


def _check_join(
    version: RoomVersion,
    event: JsonDict,
    auth_events: Mapping[StateKey, JsonDict],
    create_event: JsonDict,
    power_levels: JsonDict | None,
) -> None:
    """Rule 4.3 (v12: 5.3)."""
    sender, target = str(event.get("sender")), str(event.get("state_key"))
    prev_events = event.get("prev_events")
    # 4.3.1: the creator's own join straight after the create event. v11 and v12 name the
    # create event's sender (not v12's additional creators); v10 its `content.creator`.
    creator = (
        _content(create_event).get("creator")
        if version.creator_in_content
        else create_event.get("sender")
    )
    if (
        isinstance(prev_events, list)
        and len(prev_events) == 1
        and target == creator
        and prev_events[0] == compute_event_id(create_event, version)
    ):
        return
    if sender != target:  # 4.3.2
        raise _deny("Cannot join on behalf of another user")
    membership = _membership(auth_events, sender)
    if membership == "ban":  # 4.3.3
        raise _deny("The user is banned from the room")
    join_rule = _join_rule(version, auth_events)
    if join_rule in ("invite", "knock"):  # 4.3.4
        if membership in ("invite", "join"):
            return
        raise _deny("The room is invite-only and the user is not invited")
    if join_rule in ("restricted", "knock_restricted"):  # 4.3.5
        if membership in ("invite", "join"):
            return
        authoriser = _content(event).get("join_authorised_via_users_server")
        if not isinstance(authoriser, str):
            raise _deny("A restricted join needs join_authorised_via_users_server")
        if _membership(auth_events, authoriser) != "join":
            raise _deny("The join_authorised_via_users_server user is not joined")
        if get_user_power_level(version, authoriser, power_levels, create_event) < get_named_level(
            power_levels, "invite"
        ):
            raise _deny("The join_authorised_via_users_server user cannot invite")
        return
    if join_rule == "public":  # 4.3.6
        return
    raise _deny("The room's join rule does not allow joining")  # 4.3.7


def _check_third_party_invite(
    event: JsonDict, third_party_invite: object, auth_events: Mapping[StateKey, JsonDict]
) -> None:
    """Rule 4.4.1.2-8 (v12: 5.4.1.2-8): the invite is backed by an identity server's signature
    over `signed`, made with a key the room's m.room.third_party_invite event published."""
    signed = third_party_invite.get("signed") if isinstance(third_party_invite, dict) else None
    if not isinstance(signed, dict):
        raise _deny("third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise _deny("third_party_invite.signed needs mxid and token")
    if mxid != event.get("state_key"):
        raise _deny("third_party_invite.signed.mxid is not the invited user")
    invite_event = auth_events.get((THIRD_PARTY_INVITE, token))
    if invite_event is None:
        raise _deny("No m.room.third_party_invite event matches the token")
    if invite_event.get("sender") != event.get("sender"):
        raise _deny("The sender did not send the m.room.third_party_invite event")
    if _signed_by_any_key(signed, _third_party_public_keys(_content(invite_event))):
        return
    raise _deny("third_party_invite.signed is not signed by the identity server")


def _third_party_public_keys(content: JsonDict) -> list[str]:
    keys = [content["public_key"]] if isinstance(content.get("public_key"), str) else []
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        keys += [
            k["public_key"]
            for k in public_keys
            if isinstance(k, dict) and isinstance(k.get("public_key"), str)
        ]
    return keys


def _signed_by_any_key(signed: JsonDict, public_keys: list[str]) -> bool:
    """Appendices "Checking for a signature", against every ed25519 signature in `signed`."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        return False
    message = canonical_json(
        {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
    )
    candidates = [
        sig
        for entity in signatures.values()
        if isinstance(entity, dict)
        for key_id, sig in entity.items()
        if isinstance(key_id, str) and key_id.startswith("ed25519:") and isinstance(sig, str)
    ]
    for public_key in public_keys:
        try:
            verify_key = VerifyKey(decode_base64(public_key))
        except (CryptoError, ValueError, TypeError):
            continue
        for signature in candidates:
            try:
                verify_key.verify(message, decode_base64(signature))
            except (CryptoError, ValueError, TypeError):
                continue
            return True
    return False


def _check_power_levels(
    version: RoomVersion,
    event: JsonDict,
    auth_events: Mapping[StateKey, JsonDict],
    create_event: JsonDict,
    sender_level: int | float,
) -> None:
    """Rule 9 (v12: 10)."""
    sender = str(event.get("sender"))
    new = _content(event)
    for key in _SCALAR_LEVELS:  # 9.1: v10+ accepts integers only, never "50"
        if key in new and not _is_int(new[key]):
            raise _deny(f"Power level {key!r} must be an integer")
    for key in ("events", "notifications"):  # 9.2
        if key in new and not (
            isinstance(new[key], dict) and all(_is_int(v) for v in new[key].values())
        ):
            raise _deny(f"Power levels {key!r} must be an object of integers")
    # 9.3. An absent `users` is no user listed: only a present one must be well-formed.
    if "users" in new:
        users = new["users"]
        if not isinstance(users, dict):
            raise _deny("Power levels 'users' must be an object")
        for user_id, value in users.items():
            if not _is_user_id(user_id) or not _is_int(value):
                raise _deny("Power levels 'users' must map valid user IDs to integers")
    if version.creators_have_infinite_power:  # v12 10.4: creators cannot be (de)moted
        listed = set(_dict(new.get("users")))
        if listed & set(get_creators(version, create_event)):
            raise _deny("Room creators cannot be listed in power levels 'users'")

    old_event = auth_events.get((POWER_LEVELS, ""))
    if old_event is None:  # 9.4: the first power levels event
        return
    old = _content(old_event)

    for key in _SCALAR_LEVELS:  # 9.5
        if (key in old) == (key in new) and old.get(key) == new.get(key):
            continue
        if key in old and _to_level(old[key], DEFAULT_LEVELS[key]) > sender_level:
            raise _deny(f"Cannot change {key!r}: its current value is above your level")
        if key in new and new[key] > sender_level:
            raise _deny(f"Cannot set {key!r} above your own power level")

    for key in ("events", "notifications"):  # 9.6, 9.7
        old_map, new_map = _dict(old.get(key)), _dict(new.get(key))
        for name in sorted(old_map.keys() | new_map.keys()):
            if name in old_map and name in new_map and old_map[name] == new_map[name]:
                continue
            if name in old_map and _to_level(old_map[name], 0) > sender_level:
                raise _deny(f"Cannot change {key}[{name!r}]: its level is above yours")
            if name in new_map and new_map[name] > sender_level:
                raise _deny(f"Cannot set {key}[{name!r}] above your own power level")

    old_users, new_users = _dict(old.get("users")), _dict(new.get("users"))
    for user_id in sorted(old_users.keys() | new_users.keys()):  # 9.8, 9.9
        if (
            user_id in old_users
            and user_id in new_users
            and (old_users[user_id] == new_users[user_id])
        ):
            continue
        if (
            user_id in old_users
            and user_id != sender
            and _to_level(old_users[user_id], 0) >= sender_level
        ):
            raise _deny(f"Cannot change the power level of {user_id}: not below yours")
        if user_id in new_users and new_users[user_id] > sender_level:
            raise _deny(f"Cannot give {user_id} a power level above your own")
