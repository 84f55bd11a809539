"""The authorisation rules of room versions 1 to 12.

Rule numbers in comments follow the room version 11 text (rooms/v11.md "Authorisation rules");
room version 12 (rooms/v12.md) inserts a rule 2 (the room ID names the create event), so its
rules 3-11 are v11's 2-10; room versions 1-5 insert the m.room.aliases rule 4 and v1-v2 end with
a rule for m.room.redaction (rooms/fragments/v1-auth-rules.md). The power level helpers live in
`homeserver.events.power_levels` and are re-exported here for the callers that predate it.
"State" below is the `auth_events` mapping: the event's own auth events, the state before it, or
the current state, depending on which check the caller runs (server-server API "Checks
performed on receipt of a PDU").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeGuard

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from unpaddedbase64 import decode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict
from homeserver.events.format import (
    canonical_json,
    compute_event_id,
    event_id_of,
    prev_event_ids,
)
from homeserver.events.power_levels import CREATOR_DEFAULT_LEVEL as CREATOR_DEFAULT_LEVEL
from homeserver.events.power_levels import DEFAULT_LEVELS as DEFAULT_LEVELS
from homeserver.events.power_levels import (
    DEFAULT_NOTIFICATION_LEVEL as DEFAULT_NOTIFICATION_LEVEL,
)
from homeserver.events.power_levels import can_redact as can_redact
from homeserver.events.power_levels import client_can_redact as client_can_redact
from homeserver.events.power_levels import dict_or_empty as _dict
from homeserver.events.power_levels import domain_of as _domain
from homeserver.events.power_levels import get_creators as get_creators
from homeserver.events.power_levels import get_named_level as get_named_level
from homeserver.events.power_levels import get_notification_level as get_notification_level
from homeserver.events.power_levels import get_send_level as get_send_level
from homeserver.events.power_levels import get_user_power_level as get_user_power_level
from homeserver.events.power_levels import is_creator as is_creator
from homeserver.events.power_levels import is_int as _is_int
from homeserver.events.power_levels import parse_level, to_level
from homeserver.events.room_versions import ROOM_VERSIONS, RoomVersion

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
ALIASES = "m.room.aliases"
REDACTION = "m.room.redaction"

StateKey = tuple[str, str]

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


def _is_user_id(value: object) -> TypeGuard[str]:
    if not isinstance(value, str):
        return False
    try:
        UserID.parse(value)
    except MatrixError:
        return False
    return True


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

    if version.special_case_aliases_auth and event_type == ALIASES:  # v1-v5 rule 4
        if not isinstance(state_key, str):
            raise _deny("An m.room.aliases event needs a state_key")
        if state_key != _domain(sender):
            raise _deny("The m.room.aliases state_key is not the sender's server")
        return

    power_levels = _power_levels_content(auth_events)
    sender_level = get_user_power_level(version, sender, power_levels, create_event)

    if event_type == MEMBER:  # rule 4
        _check_member(version, event, auth_events, create_event, power_levels)
        return

    if _membership(auth_events, sender) != "join":  # rule 5
        raise _deny("The sender is not joined to the room")

    if event_type == THIRD_PARTY_INVITE:  # rule 6
        if sender_level >= get_named_level(power_levels, "invite", version=version):
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

    if version.redaction_in_auth_rules and event_type == REDACTION:  # v1-v2 rule 11
        if sender_level >= get_named_level(power_levels, "redact", version=version):
            return
        redacts = event.get("redacts")
        if _domain(redacts) is not None and _domain(redacts) == _domain(event.get("event_id")):
            return
        raise _deny("The sender may not redact this event")


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
        isinstance(room_version, str) and room_version in ROOM_VERSIONS
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
    if version.restricted_join_rule and "join_authorised_via_users_server" in content:  # 4.2
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
        if level(sender) >= get_named_level(power_levels, "invite", version=version):
            return
        raise _deny("The sender's power level is below the invite level")
    if membership == "leave":  # 4.5
        if sender == target:
            if target_membership in ("invite", "join", "knock"):
                return
            raise _deny("Cannot leave a room you are not invited to, joined to or knocking on")
        if sender_membership != "join":
            raise _deny("The sender is not joined to the room")
        if target_membership == "ban" and level(sender) < get_named_level(
            power_levels, "ban", version=version
        ):
            raise _deny("The sender's power level is below the ban level: cannot unban")
        if level(sender) >= get_named_level(power_levels, "kick", version=version) and level(
            target
        ) < level(sender):
            return
        raise _deny("The sender's power level is too low to kick this user")
    if membership == "ban":  # 4.6
        if sender_membership != "join":
            raise _deny("The sender is not joined to the room")
        if level(sender) >= get_named_level(power_levels, "ban", version=version) and level(
            target
        ) < level(sender):
            return
        raise _deny("The sender's power level is too low to ban this user")
    if membership == "knock" and version.knock_join_rule:  # 4.7 (v7+)
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
    prev_events = prev_event_ids(event, version)
    # 4.3.1: the creator's own join straight after the create event. v11 and v12 name the
    # create event's sender (not v12's additional creators); v1-v10 its `content.creator`.
    creator = (
        _content(create_event).get("creator")
        if version.creator_in_content
        else create_event.get("sender")
    )
    if (
        len(prev_events) == 1
        and target == creator
        and prev_events[0] == _event_id(create_event, version)
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
            power_levels, "invite", version=version
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

    def valid(value: object) -> bool:
        return parse_level(value, version) is not None

    if version.integer_power_levels:
        for key in _SCALAR_LEVELS:  # 9.1: v10+ accepts integers only, never "50"
            if key in new and not _is_int(new[key]):
                raise _deny(f"Power level {key!r} must be an integer")
        for key in ("events", "notifications"):  # 9.2
            if key in new and not (
                isinstance(new[key], dict) and all(_is_int(v) for v in new[key].values())
            ):
                raise _deny(f"Power levels {key!r} must be an object of integers")
    # 9.3 (v1-v9: 10.1, where a string that is an integer also counts). An absent `users` is
    # no user listed: only a present one must be well-formed.
    if "users" in new:
        users = new["users"]
        if not isinstance(users, dict):
            raise _deny("Power levels 'users' must be an object")
        for user_id, value in users.items():
            if not _is_user_id(user_id) or not valid(value):
                raise _deny("Power levels 'users' must map valid user IDs to integers")
    if version.creators_have_infinite_power:  # v12 10.4: creators cannot be (de)moted
        listed = set(_dict(new.get("users")))
        if listed & set(get_creators(version, create_event)):
            raise _deny("Room creators cannot be listed in power levels 'users'")

    old_event = auth_events.get((POWER_LEVELS, ""))
    if old_event is None:  # 9.4: the first power levels event
        return
    old = _content(old_event)

    def level_of(value: object, default: int) -> int | float:
        # A value that is not a level (only possible before v10, where 9.1 does not apply)
        # cannot be compared; it is read as the default, as everywhere else.
        return to_level(value, default, version)

    for key in _SCALAR_LEVELS:  # 9.5
        if (key in old) == (key in new) and old.get(key) == new.get(key):
            continue
        if key in old and level_of(old[key], DEFAULT_LEVELS[key]) > sender_level:
            raise _deny(f"Cannot change {key!r}: its current value is above your level")
        if key in new and level_of(new[key], DEFAULT_LEVELS[key]) > sender_level:
            raise _deny(f"Cannot set {key!r} above your own power level")

    # 9.6, 9.7; `notifications` only from v6 (rooms/v6.md, rule 10.4 and 10.5).
    maps = ("events", "notifications") if version.limit_notifications_power_levels else ("events",)
    for key in maps:
        old_map, new_map = _dict(old.get(key)), _dict(new.get(key))
        for name in sorted(old_map.keys() | new_map.keys()):
            if name in old_map and name in new_map and old_map[name] == new_map[name]:
                continue
            if name in old_map and level_of(old_map[name], 0) > sender_level:
                raise _deny(f"Cannot change {key}[{name!r}]: its level is above yours")
            if name in new_map and level_of(new_map[name], 0) > sender_level:
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
            and level_of(old_users[user_id], 0) >= sender_level
        ):
            raise _deny(f"Cannot change the power level of {user_id}: not below yours")
        if user_id in new_users and level_of(new_users[user_id], 0) > sender_level:
            raise _deny(f"Cannot give {user_id} a power level above your own")


def _event_id(event: JsonDict, version: RoomVersion) -> str | None:
    try:
        return event_id_of(event, version)
    except ValueError:
        return None
