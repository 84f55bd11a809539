"""The authorisation rules of room versions 10-12 and the power level helpers."""

from __future__ import annotations

import math
from typing import Any

import nacl.signing
import pytest
from unpaddedbase64 import encode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict
from homeserver.events.auth import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    THIRD_PARTY_INVITE,
    StateKey,
    auth_types_for_event,
    can_redact,
    check_auth,
    check_auth_events_selection,
    client_can_redact,
    get_creators,
    get_named_level,
    get_notification_level,
    get_send_level,
    get_user_power_level,
    is_creator,
)
from homeserver.events.format import canonical_json, compute_event_id, compute_room_id_v12
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

V10, V11, V12 = (KNOWN_ROOM_VERSIONS[v] for v in ("10", "11", "12"))
ALL_VERSIONS = pytest.mark.parametrize("version", [V10, V11, V12], ids=lambda v: f"v{v.identifier}")
BEFORE_V12 = pytest.mark.parametrize("version", [V10, V11], ids=lambda v: f"v{v.identifier}")

ALICE = "@alice:a.test"  # the creator
BOB = "@bob:b.test"
CAROL = "@carol:a.test"
DAVE = "@dave:c.test"
ERIN = "@erin:b.test"


class Room:
    """A room's state, built event by event; `check` runs `check_auth` against it."""

    def __init__(
        self, version: RoomVersion, creator: str = ALICE, create_content: JsonDict | None = None
    ) -> None:
        self.version = version
        content: JsonDict = {"room_version": version.identifier, **(create_content or {})}
        if version.creator_in_content:
            content.setdefault("creator", creator)
        self.create: JsonDict = {
            "type": CREATE,
            "state_key": "",
            "sender": creator,
            "content": content,
            "origin_server_ts": 0,
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
            "hashes": {"sha256": "x"},
        }
        if version.room_id_is_create_event_hash:
            self.room_id = compute_room_id_v12(self.create, version)
        else:
            self.room_id = "!room:a.test"
            self.create["room_id"] = self.room_id
        self.create_id = compute_event_id(self.create, version)
        self.state: dict[StateKey, JsonDict] = {(CREATE, ""): self.create}
        self.last = self.create_id
        self.depth = 1

    def event(
        self,
        event_type: str,
        sender: str,
        content: JsonDict,
        state_key: str | None = None,
        **extra: Any,
    ) -> JsonDict:
        self.depth += 1
        event: JsonDict = {
            "type": event_type,
            "sender": sender,
            "content": content,
            "room_id": self.room_id,
            "origin_server_ts": self.depth,
            "depth": self.depth,
            "prev_events": [self.last],
            "auth_events": [],
            "hashes": {"sha256": "x"},
        }
        if state_key is not None:
            event["state_key"] = state_key
        event.update(extra)
        return event

    def member(
        self, target: str, membership: str, sender: str | None = None, **content: Any
    ) -> JsonDict:
        return self.event(MEMBER, sender or target, {"membership": membership, **content}, target)

    def check(self, event: JsonDict) -> None:
        check_auth(self.version, event, self.state, create_event=self.create)

    def deny(self, event: JsonDict, fragment: str) -> None:
        with pytest.raises(MatrixError) as e:
            self.check(event)
        assert e.value.code == Codes.FORBIDDEN
        assert fragment.lower() in e.value.message.lower(), e.value.message

    def apply(self, event: JsonDict) -> JsonDict:
        self.check(event)
        return self.force(event)

    def force(self, event: JsonDict) -> JsonDict:
        """Put an event in the state without checking it (test set-up)."""
        if "state_key" in event:
            self.state[(event["type"], event["state_key"])] = event
        self.last = compute_event_id(event, self.version)
        return event

    def set_membership(self, user: str, membership: str, **content: Any) -> None:
        self.force(self.member(user, membership, **content))

    def set_power_levels(self, **content: Any) -> None:
        self.force(self.event(POWER_LEVELS, ALICE, content, ""))

    def set_join_rule(self, rule: str) -> None:
        self.force(self.event(JOIN_RULES, ALICE, {"join_rule": rule}, ""))

    def power_levels(self) -> JsonDict | None:
        event = self.state.get((POWER_LEVELS, ""))
        return event["content"] if event else None


def creator_users(version: RoomVersion, **levels: int) -> dict[str, int]:
    """`users` for a power levels event: v12 may not list the creator, who is above it all."""
    users = {} if version.creators_have_infinite_power else {ALICE: 100}
    users.update({user_id(k): v for k, v in levels.items()})
    return users


def user_id(name: str) -> str:
    return {"bob": BOB, "carol": CAROL, "dave": DAVE, "erin": ERIN, "alice": ALICE}[name]


def make_room(version: RoomVersion, join_rule: str = "public", **levels: int) -> Room:
    """Creator joined, power levels (creator 100 before v12), a join rule."""
    room = Room(version)
    room.apply(room.member(ALICE, "join"))
    room.apply(room.event(POWER_LEVELS, ALICE, {"users": creator_users(version, **levels)}, ""))
    room.apply(room.event(JOIN_RULES, ALICE, {"join_rule": join_rule}, ""))
    return room


# --- m.room.create (rule 1) --------------------------------------------------------------------


@ALL_VERSIONS
def test_create_is_allowed(version: RoomVersion) -> None:
    room = Room(version)
    room.check(room.create)


@ALL_VERSIONS
def test_create_with_prev_events_is_rejected(version: RoomVersion) -> None:
    room = Room(version)
    room.deny(dict(room.create, prev_events=["$x"]), "prev_events")


@BEFORE_V12
def test_create_room_id_domain_must_match_sender(version: RoomVersion) -> None:
    room = Room(version)
    room.deny(dict(room.create, room_id="!room:elsewhere.test"), "server")
    room.deny({k: v for k, v in room.create.items() if k != "room_id"}, "server")


def test_v12_create_must_not_have_room_id() -> None:
    room = Room(V12)
    room.deny(dict(room.create, room_id=room.room_id), "must not have a room_id")


@ALL_VERSIONS
@pytest.mark.parametrize("room_version", ["13", "0", "999", "org.example.x", 12, None])
def test_create_with_unknown_room_version_is_rejected(
    version: RoomVersion, room_version: Any
) -> None:
    room = Room(version, create_content={"room_version": room_version})
    room.deny(room.create, "room version")


@ALL_VERSIONS
def test_create_without_room_version_is_allowed(version: RoomVersion) -> None:
    room = Room(version)
    del room.create["content"]["room_version"]
    room.check(room.create)


def test_v10_create_needs_creator() -> None:
    room = Room(V10)
    del room.create["content"]["creator"]
    room.deny(room.create, "no creator")


@pytest.mark.parametrize("version", [V11, V12], ids=["v11", "v12"])
def test_v11_create_needs_no_creator(version: RoomVersion) -> None:
    Room(version).check(Room(version).create)


@pytest.mark.parametrize(
    "additional",
    [
        "@bob:b.test",
        [1],
        ["bob"],
        ["@bob"],
        [None],
        ["@bob:b.test", "not a user"],
        {"a": 1},
    ],
)
def test_v12_invalid_additional_creators_are_rejected(additional: Any) -> None:
    room = Room(V12, create_content={"additional_creators": additional})
    room.deny(room.create, "additional_creators")


@pytest.mark.parametrize("additional", [[], [BOB], [BOB, DAVE]])
def test_v12_valid_additional_creators_are_allowed(additional: list[str]) -> None:
    room = Room(V12, create_content={"additional_creators": additional})
    room.check(room.create)


@BEFORE_V12
def test_additional_creators_is_not_validated_before_v12(version: RoomVersion) -> None:
    room = Room(version, create_content={"additional_creators": "junk"})
    room.check(room.create)


# --- the create event and the room (rules 2, v12 rule 2, rule 3) ---------------------------------


@ALL_VERSIONS
def test_event_without_create_event_is_rejected(version: RoomVersion) -> None:
    room = make_room(version)
    event = room.event("m.room.message", ALICE, {"body": "hi"})
    state = {k: v for k, v in room.state.items() if k[0] != CREATE}
    with pytest.raises(MatrixError, match="m.room.create"):
        check_auth(version, event, state)


@ALL_VERSIONS
def test_create_event_may_come_from_the_state(version: RoomVersion) -> None:
    room = make_room(version)
    check_auth(version, room.event("m.room.message", ALICE, {"body": "hi"}), room.state)


def test_v12_room_id_must_be_the_create_event_hash() -> None:
    room = make_room(V12)
    event = room.event("m.room.message", ALICE, {"body": "hi"}, room_id="!other")
    room.deny(event, "not derived from the m.room.create")
    other_create = dict(room.create, origin_server_ts=99)
    with pytest.raises(MatrixError, match="not derived"):
        check_auth(V12, room.event("m.room.message", ALICE, {}), room.state, other_create)


@BEFORE_V12
def test_create_event_of_another_room_is_rejected(version: RoomVersion) -> None:
    room = make_room(version)
    event = room.event("m.room.message", ALICE, {"body": "hi"}, room_id="!other:a.test")
    room.deny(event, "different room")


@ALL_VERSIONS
def test_auth_event_of_another_room_is_rejected(version: RoomVersion) -> None:
    room = make_room(version)
    room.state[(MEMBER, ALICE)] = dict(room.state[(MEMBER, ALICE)], room_id="!x:a.test")
    room.deny(room.event("m.room.message", ALICE, {"body": "hi"}), "different room")


@ALL_VERSIONS
def test_m_federate_false_rejects_other_servers(version: RoomVersion) -> None:
    room = Room(version, create_content={"m.federate": False})
    room.apply(room.member(ALICE, "join"))
    room.set_join_rule("public")
    room.deny(room.member(BOB, "join"), "does not federate")
    room.apply(room.member(CAROL, "join"))  # same server as the creator


# --- joins (rule 4.3) ---------------------------------------------------------------------------


@ALL_VERSIONS
def test_creator_joins_right_after_create(version: RoomVersion) -> None:
    room = Room(version)
    room.check(room.member(ALICE, "join"))


@ALL_VERSIONS
def test_first_join_rule_needs_the_create_event_as_only_prev_event(version: RoomVersion) -> None:
    room = Room(version)
    join = room.member(ALICE, "join")
    room.deny(dict(join, prev_events=["$other"]), "not invited")
    room.deny(dict(join, prev_events=[room.create_id, "$x"]), "not invited")
    room.deny(dict(join, prev_events=room.create_id), "not invited")
    room.deny(room.member(BOB, "join"), "not invited")


def test_v10_first_join_is_for_content_creator() -> None:
    room = Room(V10, creator=ALICE, create_content={"creator": CAROL})
    room.check(room.member(CAROL, "join"))
    room.deny(room.member(ALICE, "join"), "not invited")


def test_v12_additional_creator_has_no_first_join() -> None:
    room = Room(V12, create_content={"additional_creators": [BOB]})
    room.deny(room.member(BOB, "join"), "not invited")


@ALL_VERSIONS
def test_join_on_behalf_of_another_user_is_rejected(version: RoomVersion) -> None:
    room = make_room(version)
    room.deny(room.member(BOB, "join", sender=ALICE), "on behalf of another")


@ALL_VERSIONS
def test_banned_user_cannot_join(version: RoomVersion) -> None:
    room = make_room(version)
    room.set_membership(BOB, "ban")
    room.deny(room.member(BOB, "join"), "banned")


@ALL_VERSIONS
def test_public_join(version: RoomVersion) -> None:
    room = make_room(version)
    room.apply(room.member(BOB, "join"))
    room.apply(room.member(BOB, "join", displayname="Bob"))  # a profile change


@ALL_VERSIONS
@pytest.mark.parametrize("rule", ["invite", "knock"])
def test_invite_and_knock_rooms_need_an_invite(version: RoomVersion, rule: str) -> None:
    room = make_room(version, join_rule=rule)
    room.deny(room.member(BOB, "join"), "not invited")
    room.set_membership(BOB, "knock")
    room.deny(room.member(BOB, "join"), "not invited")
    room.set_membership(BOB, "invite")
    room.apply(room.member(BOB, "join"))
    room.apply(room.member(BOB, "join", displayname="B"))


@ALL_VERSIONS
def test_no_join_rules_event_is_invite_only(version: RoomVersion) -> None:
    room = Room(version)
    room.apply(room.member(ALICE, "join"))
    room.deny(room.member(BOB, "join"), "not invited")
    room.set_membership(BOB, "invite")
    room.apply(room.member(BOB, "join"))


@ALL_VERSIONS
@pytest.mark.parametrize("rule", ["private", "", "Public"])
def test_unknown_join_rule_rejects_joins(version: RoomVersion, rule: str) -> None:
    room = make_room(version, join_rule=rule)
    room.deny(room.member(BOB, "join"), "does not allow joining")


def signed_by(event: JsonDict, server: str) -> JsonDict:
    event["signatures"] = {server: {"ed25519:1": "c2ln"}}
    return event


@ALL_VERSIONS
@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
def test_restricted_join_via_authorising_user(version: RoomVersion, rule: str) -> None:
    room = make_room(version, join_rule=rule)
    room.set_membership(CAROL, "join")
    join = signed_by(room.member(BOB, "join", join_authorised_via_users_server=CAROL), "a.test")
    room.check(join)


@ALL_VERSIONS
@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
def test_restricted_join_rejections(version: RoomVersion, rule: str) -> None:
    room = make_room(version, join_rule=rule)
    room.deny(room.member(BOB, "join"), "needs join_authorised_via_users_server")
    # The authorising user must be joined...
    join = signed_by(room.member(BOB, "join", join_authorised_via_users_server=CAROL), "a.test")
    room.deny(join, "is not joined")
    room.set_membership(CAROL, "invite")
    room.deny(join, "is not joined")
    # ... and able to invite.
    room.set_membership(CAROL, "join")
    room.set_power_levels(users=creator_users(version), invite=10)
    room.deny(join, "cannot invite")
    # The authorising user's server must have signed the event (rule 4.2).
    room.set_power_levels(users=creator_users(version))
    room.check(join)
    unsigned_join = room.member(BOB, "join", join_authorised_via_users_server=CAROL)
    room.deny(unsigned_join, "not signed")
    room.deny(signed_by(dict(unsigned_join), "b.test"), "not signed")
    room.deny(
        signed_by(room.member(BOB, "join", join_authorised_via_users_server="carol"), "a.test"),
        "not a valid user ID",
    )


@ALL_VERSIONS
@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
def test_restricted_join_with_invite_needs_no_authoriser(version: RoomVersion, rule: str) -> None:
    room = make_room(version, join_rule=rule)
    room.set_membership(BOB, "invite")
    room.check(room.member(BOB, "join"))


# --- membership shape (rule 4.1, 4.8) -----------------------------------------------------------


@ALL_VERSIONS
def test_member_event_needs_state_key_and_membership(version: RoomVersion) -> None:
    room = make_room(version)
    room.deny(room.event(MEMBER, BOB, {"membership": "join"}), "needs a state_key")
    room.deny(room.event(MEMBER, BOB, {}, BOB), "content.membership")
    room.deny(room.event(MEMBER, BOB, {"membership": 1}, BOB), "content.membership")


@ALL_VERSIONS
def test_unknown_membership_is_rejected(version: RoomVersion) -> None:
    room = make_room(version)
    room.deny(room.member(BOB, "lurk"), "unknown membership")


# --- invites (rule 4.4) -------------------------------------------------------------------------


@ALL_VERSIONS
def test_invite(version: RoomVersion) -> None:
    room = make_room(version, join_rule="invite")
    room.apply(room.member(BOB, "invite", sender=ALICE))
    room.deny(room.member(BOB, "invite", sender=ERIN), "not joined")


@ALL_VERSIONS
@pytest.mark.parametrize("membership", ["join", "ban"])
def test_invite_of_joined_or_banned_user_is_rejected(version: RoomVersion, membership: str) -> None:
    room = make_room(version)
    room.set_membership(BOB, membership)
    room.deny(room.member(BOB, "invite", sender=ALICE), f"membership is {membership}")


@ALL_VERSIONS
@pytest.mark.parametrize("membership", ["invite", "leave", "knock"])
def test_invite_of_left_invited_or_knocking_user_is_allowed(
    version: RoomVersion, membership: str
) -> None:
    room = make_room(version)
    room.set_membership(BOB, membership)
    room.check(room.member(BOB, "invite", sender=ALICE))


@ALL_VERSIONS
def test_invite_needs_invite_level(version: RoomVersion) -> None:
    room = make_room(version, carol=10)
    room.set_membership(CAROL, "join")
    room.check(room.member(BOB, "invite", sender=CAROL))  # invite level defaults to 0
    room.set_power_levels(users=creator_users(version, carol=10), invite=11)
    room.deny(room.member(BOB, "invite", sender=CAROL), "invite level")
    room.set_power_levels(users=creator_users(version, carol=11), invite=11)
    room.check(room.member(BOB, "invite", sender=CAROL))


IDENTITY_KEY = nacl.signing.SigningKey(b"\x01" * 32)
IDENTITY_PUBLIC_KEY = encode_base64(IDENTITY_KEY.verify_key.encode())


def third_party_signed(
    mxid: str = BOB, token: str = "tok", key: nacl.signing.SigningKey = IDENTITY_KEY
) -> JsonDict:
    signed: JsonDict = {"mxid": mxid, "token": token, "sender": ALICE}
    signature = key.sign(canonical_json(signed)).signature
    signed["signatures"] = {"id.test": {"ed25519:0": encode_base64(signature)}}
    return signed


def third_party_room(version: RoomVersion, **invite_content: Any) -> Room:
    room = make_room(version, join_rule="invite")
    content = invite_content or {
        "display_name": "b...",
        "public_key": IDENTITY_PUBLIC_KEY,
        "key_validity_url": "https://id.test/isvalid",
    }
    room.apply(room.event(THIRD_PARTY_INVITE, ALICE, content, "tok"))
    return room


def third_party_invite(room: Room, signed: Any, sender: str = ALICE) -> JsonDict:
    return room.member(
        BOB, "invite", sender=sender, third_party_invite={"display_name": "b...", "signed": signed}
    )


@ALL_VERSIONS
def test_third_party_invite_is_allowed(version: RoomVersion) -> None:
    room = third_party_room(version)
    room.check(third_party_invite(room, third_party_signed()))


@ALL_VERSIONS
def test_third_party_invite_with_public_keys_list(version: RoomVersion) -> None:
    other = encode_base64(nacl.signing.SigningKey(b"\x02" * 32).verify_key.encode())
    room = third_party_room(
        version,
        public_key=other,
        public_keys=[{"public_key": "bad key"}, {"public_key": IDENTITY_PUBLIC_KEY}],
    )
    room.check(third_party_invite(room, third_party_signed()))


@ALL_VERSIONS
def test_third_party_invite_rejections(version: RoomVersion) -> None:
    room = third_party_room(version)
    room.deny(room.member(BOB, "invite", sender=ALICE, third_party_invite={}), "no signed")
    room.deny(third_party_invite(room, "junk"), "no signed")
    room.deny(third_party_invite(room, {"mxid": BOB}), "needs mxid and token")
    room.deny(third_party_invite(room, {"token": "tok"}), "needs mxid and token")
    room.deny(third_party_invite(room, third_party_signed(mxid=DAVE)), "not the invited user")
    room.deny(third_party_invite(room, third_party_signed(token="nope")), "matches the token")
    room.set_membership(CAROL, "join")
    room.deny(third_party_invite(room, third_party_signed(), sender=CAROL), "did not send")
    wrong_key = nacl.signing.SigningKey(b"\x03" * 32)
    room.deny(third_party_invite(room, third_party_signed(key=wrong_key)), "not signed")
    tampered = third_party_signed()
    tampered["sender"] = CAROL
    room.deny(third_party_invite(room, tampered), "not signed")
    no_signatures = third_party_signed()
    del no_signatures["signatures"]
    room.deny(third_party_invite(room, no_signatures), "not signed")
    room.set_membership(BOB, "ban")
    room.deny(third_party_invite(room, third_party_signed()), "banned")


# --- leave, kick, unban (rule 4.5) --------------------------------------------------------------


@ALL_VERSIONS
@pytest.mark.parametrize("membership", ["join", "invite", "knock"])
def test_user_may_leave(version: RoomVersion, membership: str) -> None:
    room = make_room(version)
    room.set_membership(BOB, membership)
    room.check(room.member(BOB, "leave"))


@ALL_VERSIONS
@pytest.mark.parametrize("membership", [None, "leave", "ban"])
def test_user_may_not_leave_without_membership(
    version: RoomVersion, membership: str | None
) -> None:
    room = make_room(version)
    if membership:
        room.set_membership(BOB, membership)
    room.deny(room.member(BOB, "leave"), "cannot leave")


@ALL_VERSIONS
def test_kick(version: RoomVersion) -> None:
    room = make_room(version, carol=50, dave=50)
    room.set_membership(BOB, "join")
    room.set_membership(CAROL, "join")
    room.set_membership(DAVE, "join")
    room.check(room.member(BOB, "leave", sender=CAROL))  # 50 >= kick 50, target 0 < 50
    room.deny(room.member(DAVE, "leave", sender=CAROL), "too low to kick")  # equal levels
    room.deny(room.member(CAROL, "leave", sender=BOB), "too low to kick")
    room.deny(room.member(BOB, "leave", sender=ERIN), "not joined")
    room.set_power_levels(users=creator_users(version, carol=50), kick=60)
    room.deny(room.member(BOB, "leave", sender=CAROL), "too low to kick")


@ALL_VERSIONS
def test_unban_needs_ban_and_kick_level(version: RoomVersion) -> None:
    room = make_room(version, carol=50)
    room.set_membership(CAROL, "join")
    room.set_membership(BOB, "ban")
    room.check(room.member(BOB, "leave", sender=CAROL))
    room.set_power_levels(users=creator_users(version, carol=50), ban=60, kick=0)
    room.deny(room.member(BOB, "leave", sender=CAROL), "below the ban level")
    room.set_power_levels(users=creator_users(version, carol=50), ban=0, kick=60)
    room.deny(room.member(BOB, "leave", sender=CAROL), "too low to kick")


# --- ban (rule 4.6) -----------------------------------------------------------------------------


@ALL_VERSIONS
def test_ban(version: RoomVersion) -> None:
    room = make_room(version, carol=50, dave=50)
    room.set_membership(CAROL, "join")
    room.set_membership(DAVE, "join")
    room.check(room.member(BOB, "ban", sender=CAROL))  # needs no membership of the target
    room.check(room.member(ERIN, "ban", sender=ALICE))
    room.deny(room.member(DAVE, "ban", sender=CAROL), "too low to ban")
    room.deny(room.member(ALICE, "ban", sender=CAROL), "too low to ban")
    room.deny(room.member(CAROL, "ban", sender=BOB), "not joined")
    room.set_membership(BOB, "join")
    room.deny(room.member(ERIN, "ban", sender=BOB), "too low to ban")
    room.set_power_levels(users=creator_users(version, carol=50), ban=51)
    room.deny(room.member(BOB, "ban", sender=CAROL), "too low to ban")


# --- knock (rule 4.7) ---------------------------------------------------------------------------


@ALL_VERSIONS
@pytest.mark.parametrize("rule", ["knock", "knock_restricted"])
def test_knock(version: RoomVersion, rule: str) -> None:
    room = make_room(version, join_rule=rule)
    room.check(room.member(BOB, "knock"))
    room.set_membership(BOB, "leave")
    room.check(room.member(BOB, "knock"))
    room.set_membership(BOB, "knock")
    room.check(room.member(BOB, "knock"))
    room.deny(room.member(DAVE, "knock", sender=ALICE), "on behalf of another")
    for membership in ("ban", "invite", "join"):
        room.set_membership(BOB, membership)
        room.deny(room.member(BOB, "knock"), f"already {membership}")


@ALL_VERSIONS
@pytest.mark.parametrize("rule", ["public", "invite", "restricted", "private"])
def test_knock_needs_a_knock_join_rule(version: RoomVersion, rule: str) -> None:
    room = make_room(version, join_rule=rule)
    room.deny(room.member(BOB, "knock"), "does not allow knocking")


# --- other events (rules 5-8) -------------------------------------------------------------------


@ALL_VERSIONS
@pytest.mark.parametrize("membership", [None, "invite", "leave", "ban", "knock"])
def test_sender_must_be_joined(version: RoomVersion, membership: str | None) -> None:
    room = make_room(version)
    if membership:
        room.set_membership(BOB, membership)
    room.deny(room.event("m.room.message", BOB, {"body": "hi"}), "not joined")


@ALL_VERSIONS
def test_messages_need_events_default(version: RoomVersion) -> None:
    room = make_room(version, carol=10)
    room.set_membership(BOB, "join")
    room.set_membership(CAROL, "join")
    room.check(room.event("m.room.message", BOB, {"body": "hi"}))
    room.set_power_levels(users=creator_users(version, carol=10), events_default=10)
    room.deny(room.event("m.room.message", BOB, {"body": "hi"}), "too low to send m.room.message")
    room.check(room.event("m.room.message", CAROL, {"body": "hi"}))
    room.set_power_levels(
        users=creator_users(version, carol=10),
        events_default=10,
        events={"m.room.message": 20, "m.reaction": 0},
    )
    room.deny(room.event("m.room.message", CAROL, {"body": "hi"}), "too low")
    room.check(room.event("m.reaction", BOB, {}))


@ALL_VERSIONS
def test_state_needs_state_default(version: RoomVersion) -> None:
    room = make_room(version, carol=50)
    room.set_membership(BOB, "join")
    room.set_membership(CAROL, "join")
    room.deny(room.event("m.room.topic", BOB, {"topic": "t"}, ""), "too low to send m.room.topic")
    room.check(room.event("m.room.topic", CAROL, {"topic": "t"}, ""))
    room.set_power_levels(
        users=creator_users(version, carol=50), state_default=0, events={"m.room.name": 60}
    )
    room.check(room.event("m.room.topic", BOB, {"topic": "t"}, ""))
    room.deny(room.event("m.room.name", CAROL, {"name": "n"}, ""), "too low")


@ALL_VERSIONS
def test_without_power_levels_event_creator_has_100(version: RoomVersion) -> None:
    room = Room(version)
    room.apply(room.member(ALICE, "join"))
    room.apply(room.event(JOIN_RULES, ALICE, {"join_rule": "public"}, ""))
    room.apply(room.member(BOB, "join"))
    room.check(room.event("m.room.name", ALICE, {"name": "n"}, ""))
    room.deny(room.event("m.room.name", BOB, {"name": "n"}, ""), "too low")  # state_default 50
    room.check(room.event("m.room.message", BOB, {"body": "hi"}))  # events_default 0
    room.check(room.member(BOB, "leave", sender=ALICE))


@ALL_VERSIONS
def test_state_key_naming_a_user_must_be_the_sender(version: RoomVersion) -> None:
    room = make_room(version, bob=50)
    room.set_membership(BOB, "join")
    room.check(room.event("m.custom", BOB, {}, BOB))
    room.deny(room.event("m.custom", BOB, {}, ALICE), "must be the sender")
    room.deny(room.event("m.custom", ALICE, {}, BOB), "must be the sender")
    room.check(room.event("m.custom", BOB, {}, "bob"))


@ALL_VERSIONS
def test_third_party_invite_event_needs_invite_level(version: RoomVersion) -> None:
    room = make_room(version)
    room.set_membership(BOB, "join")
    # Allowed at the invite level regardless of state_default (rule 6 comes before rule 7).
    room.set_power_levels(users=creator_users(version), state_default=100)
    room.check(room.event(THIRD_PARTY_INVITE, BOB, {"public_key": "k"}, "t"))
    room.set_power_levels(users=creator_users(version), invite=1)
    room.deny(room.event(THIRD_PARTY_INVITE, BOB, {"public_key": "k"}, "t"), "invite level")
    room.set_membership(ERIN, "leave")
    room.deny(room.event(THIRD_PARTY_INVITE, ERIN, {}, "t"), "not joined")


@ALL_VERSIONS
def test_redaction_is_checked_like_any_event(version: RoomVersion) -> None:
    # The redact level is not an auth rule (rooms/v11 "Authorisation rules", note).
    room = make_room(version)
    room.set_membership(BOB, "join")
    room.set_power_levels(users=creator_users(version), redact=100)
    content = {"redacts": "$x"} if version.redacts_in_content else {}
    room.check(room.event("m.room.redaction", BOB, content))
    room.set_power_levels(users=creator_users(version), events={"m.room.redaction": 1})
    room.deny(room.event("m.room.redaction", BOB, content), "too low")


@ALL_VERSIONS
def test_event_without_type_or_sender_is_rejected(version: RoomVersion) -> None:
    room = make_room(version)
    room.deny({"content": {}, "room_id": room.room_id}, "no type or sender")


# --- m.room.power_levels (rule 9; v12 rule 10) --------------------------------------------------


@ALL_VERSIONS
def test_creator_sets_first_power_levels(version: RoomVersion) -> None:
    room = Room(version)
    room.apply(room.member(ALICE, "join"))
    room.check(
        room.event(
            POWER_LEVELS,
            ALICE,
            {"users": creator_users(version, bob=100), "ban": 100, "events": {"m.x": 100}},
            "",
        )
    )


SCALARS = ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]


@ALL_VERSIONS
@pytest.mark.parametrize("key", SCALARS)
@pytest.mark.parametrize("value", ["50", 50.0, True, None, [50], 2**53])
def test_power_levels_must_be_integers(version: RoomVersion, key: str, value: Any) -> None:
    room = make_room(version)
    content = {"users": creator_users(version), key: value}
    room.deny(room.event(POWER_LEVELS, ALICE, content, ""), "must be an integer")


@ALL_VERSIONS
@pytest.mark.parametrize("key", ["events", "notifications"])
@pytest.mark.parametrize("value", [{"m.x": "50"}, {"m.x": False}, [], "x", {"m.x": 1.5}])
def test_events_and_notifications_must_map_to_integers(
    version: RoomVersion, key: str, value: Any
) -> None:
    room = make_room(version)
    content = {"users": creator_users(version), key: value}
    room.deny(room.event(POWER_LEVELS, ALICE, content, ""), "object of integers")


@ALL_VERSIONS
@pytest.mark.parametrize(
    "users", [[], "x", {"bob": 1}, {"@bob": 1}, {BOB: "50"}, {BOB: None}, {BOB: True}]
)
def test_users_must_map_user_ids_to_integers(version: RoomVersion, users: Any) -> None:
    room = make_room(version)
    room.deny(room.event(POWER_LEVELS, ALICE, {"users": users}, ""), "users")


@ALL_VERSIONS
def test_power_levels_without_users_are_allowed(version: RoomVersion) -> None:
    room = make_room(version)
    if version.creators_have_infinite_power:
        room.check(room.event(POWER_LEVELS, ALICE, {"ban": 10}, ""))
    else:  # Alice would drop from 100 to users_default: allowed for her own entry
        room.check(room.event(POWER_LEVELS, ALICE, {"users_default": 100}, ""))


@ALL_VERSIONS
@pytest.mark.parametrize("key", SCALARS)
def test_scalar_changes_limited_to_own_level(version: RoomVersion, key: str) -> None:
    room = make_room(version, carol=50)
    room.set_membership(CAROL, "join")
    room.set_power_levels(users=creator_users(version, carol=50), events={POWER_LEVELS: 50})
    base: JsonDict = {"users": creator_users(version, carol=50), "events": {POWER_LEVELS: 50}}
    room.check(room.event(POWER_LEVELS, CAROL, {**base, key: 50}, ""))  # added, not above
    room.deny(room.event(POWER_LEVELS, CAROL, {**base, key: 51}, ""), "above your own")
    room.set_power_levels(**base, **{key: 60})
    room.deny(room.event(POWER_LEVELS, CAROL, {**base, key: 10}, ""), "current value")
    room.deny(room.event(POWER_LEVELS, CAROL, base, ""), "current value")  # removal
    room.check(room.event(POWER_LEVELS, CAROL, {**base, key: 60}, ""))  # unchanged


@ALL_VERSIONS
@pytest.mark.parametrize("key", ["events", "notifications"])
def test_events_and_notifications_changes_limited_to_own_level(
    version: RoomVersion, key: str
) -> None:
    room = make_room(version, carol=50)
    room.set_membership(CAROL, "join")
    users = creator_users(version, carol=50)
    events = {POWER_LEVELS: 50} if key == "notifications" else {}

    def pl(entries: dict[str, int]) -> JsonDict:
        if key == "events":
            return room.event(
                POWER_LEVELS, CAROL, {"users": users, "events": {POWER_LEVELS: 50, **entries}}, ""
            )
        return room.event(
            POWER_LEVELS, CAROL, {"users": users, "events": events, "notifications": entries}, ""
        )

    room.set_power_levels(
        users=users,
        **(
            {"events": {POWER_LEVELS: 50, "m.high": 60}}
            if key == "events"
            else {"events": events, "notifications": {"m.high": 60}}
        ),
    )
    keep = {"m.high": 60}
    room.check(pl({**keep, "m.new": 50}))
    room.deny(pl({**keep, "m.new": 51}), "above your own")
    room.deny(pl({"m.high": 10}), "its level is above yours")
    room.deny(pl({}), "its level is above yours")  # removal


@ALL_VERSIONS
def test_user_level_changes(version: RoomVersion) -> None:
    room = make_room(version, carol=50, dave=50, bob=10)
    for user in (BOB, CAROL, DAVE):
        room.set_membership(user, "join")
    room.set_power_levels(
        users=creator_users(version, carol=50, dave=50, bob=10), events={POWER_LEVELS: 50}
    )

    def change(**levels: int) -> JsonDict:
        users = creator_users(version, carol=50, dave=50, bob=10)
        users.update({user_id(k): v for k, v in levels.items()})
        return room.event(POWER_LEVELS, CAROL, {"users": users, "events": {POWER_LEVELS: 50}}, "")

    room.check(change(bob=50))  # up to her own level
    room.check(change(bob=0))
    room.check(change(erin=50))  # added
    room.deny(change(bob=51), "above your own")
    room.deny(change(erin=51), "above your own")
    room.deny(change(dave=40), "not below yours")  # a peer at her level
    room.check(change(carol=20))  # demoting herself
    room.deny(change(carol=51), "above your own")
    removed = creator_users(version, carol=50, dave=50)
    room.check(
        room.event(POWER_LEVELS, CAROL, {"users": removed, "events": {POWER_LEVELS: 50}}, "")
    )
    removed.pop(DAVE)
    room.deny(
        room.event(POWER_LEVELS, CAROL, {"users": removed, "events": {POWER_LEVELS: 50}}, ""),
        "not below yours",
    )


@ALL_VERSIONS
def test_power_levels_need_the_send_level(version: RoomVersion) -> None:
    room = make_room(version, carol=49)
    room.set_membership(CAROL, "join")
    room.deny(
        room.event(POWER_LEVELS, CAROL, {"users": creator_users(version, carol=49)}, ""),
        "too low to send m.room.power_levels",
    )


@BEFORE_V12
def test_creator_has_no_special_power_before_v12(version: RoomVersion) -> None:
    room = make_room(version, bob=100)
    room.set_membership(BOB, "join")
    room.deny(room.member(ALICE, "ban", sender=BOB), "too low to ban")
    room.check(room.event(POWER_LEVELS, ALICE, {"users": {ALICE: 100, BOB: 100}}, ""))
    room.deny(
        room.event(POWER_LEVELS, ALICE, {"users": {ALICE: 100, BOB: 50}}, ""), "not below yours"
    )


# --- room version 12: creators ------------------------------------------------------------------


def test_v12_creator_listed_in_users_is_rejected() -> None:
    room = Room(V12, create_content={"additional_creators": [BOB]})
    room.apply(room.member(ALICE, "join"))
    room.deny(room.event(POWER_LEVELS, ALICE, {"users": {ALICE: 100}}, ""), "creators cannot")
    room.deny(room.event(POWER_LEVELS, ALICE, {"users": {BOB: 100}}, ""), "creators cannot")
    room.check(room.event(POWER_LEVELS, ALICE, {"users": {CAROL: 100}}, ""))


def test_v12_creators_have_infinite_power() -> None:
    room = Room(V12, create_content={"additional_creators": [BOB]})
    room.apply(room.member(ALICE, "join"))
    room.apply(
        room.event(
            POWER_LEVELS,
            ALICE,
            {
                "users": {CAROL: 2**53 - 1},
                "ban": 2**53 - 1,
                "kick": 2**53 - 1,
                "state_default": 2**53 - 1,
                "events_default": 2**53 - 1,
            },
            "",
        )
    )
    room.apply(room.event(JOIN_RULES, ALICE, {"join_rule": "public"}, ""))
    room.apply(room.member(BOB, "join"))
    room.apply(room.member(CAROL, "join"))
    # Creators outrank the highest possible level, and nobody outranks a creator.
    room.check(room.member(CAROL, "ban", sender=ALICE))
    room.check(room.member(CAROL, "leave", sender=BOB))
    room.check(room.event("m.room.topic", BOB, {"topic": "t"}, ""))
    room.deny(room.member(ALICE, "ban", sender=CAROL), "too low to ban")
    room.deny(room.member(BOB, "ban", sender=ALICE), "too low to ban")  # creators are equals
    room.check(room.event(POWER_LEVELS, BOB, {"users": {CAROL: 0}}, ""))


def test_v12_power_level_of_creators() -> None:
    room = Room(V12, create_content={"additional_creators": [BOB]})
    for pl in (None, {"users": {}, "users_default": 10}):
        assert get_user_power_level(V12, ALICE, pl, room.create) == math.inf
        assert get_user_power_level(V12, BOB, pl, room.create) == math.inf
    assert get_user_power_level(V12, CAROL, None, room.create) == 0
    assert get_user_power_level(V12, CAROL, {"users_default": 10}, room.create) == 10


# --- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "creators"), [(V10, [CAROL]), (V11, [ALICE]), (V12, [ALICE, BOB])]
)
def test_get_creators(version: RoomVersion, creators: list[str]) -> None:
    room = Room(version, create_content={"creator": CAROL, "additional_creators": [BOB, ALICE]})
    assert get_creators(version, room.create) == creators
    for user in (ALICE, BOB, CAROL):
        assert is_creator(version, user, room.create) is (user in creators)
    assert not is_creator(version, ALICE, None)


@BEFORE_V12
def test_get_user_power_level_before_v12(version: RoomVersion) -> None:
    room = Room(version)
    assert get_user_power_level(version, ALICE, None, room.create) == 100
    assert get_user_power_level(version, BOB, None, room.create) == 0
    assert get_user_power_level(version, ALICE, {}, room.create) == 0
    pl = {"users": {BOB: 75}, "users_default": 5}
    assert get_user_power_level(version, BOB, pl, room.create) == 75
    assert get_user_power_level(version, ALICE, pl, room.create) == 5
    assert get_user_power_level(version, CAROL, {"users_default": "7"}, room.create) == 0


def test_get_named_level_defaults() -> None:
    assert [get_named_level(None, n) for n in ("invite", "kick", "ban", "redact")] == [
        0,
        50,
        50,
        50,
    ]
    assert get_named_level({}, "state_default") == 50
    assert get_named_level({}, "events_default") == 0
    assert get_named_level({"kick": 10}, "kick") == 10
    assert get_named_level({"kick": "10"}, "kick") == 50
    assert get_named_level(None, "m.custom", 3) == 3


def test_get_send_level() -> None:
    assert get_send_level(V11, "m.room.name", True, None) == 50
    assert get_send_level(V11, "m.room.message", False, None) == 0
    pl = {"state_default": 20, "events_default": 5, "events": {"m.room.name": 70}}
    assert get_send_level(V11, "m.room.name", True, pl) == 70
    assert get_send_level(V11, "m.room.topic", True, pl) == 20
    assert get_send_level(V11, "m.room.message", False, pl) == 5
    assert get_send_level(V11, "m.room.name", True, {"events": {"m.room.name": "70"}}) == 50


def test_get_notification_level() -> None:
    assert get_notification_level(None) == 50
    assert get_notification_level({"notifications": {"room": 20}}) == 20
    assert get_notification_level({"notifications": {"room": 20}}, "other") == 50


@ALL_VERSIONS
def test_can_redact(version: RoomVersion) -> None:
    room = Room(version)
    pl = {"users": {CAROL: 50, DAVE: 49}}
    assert can_redact(version, CAROL, BOB, pl, room.create)  # redact level
    assert not can_redact(version, DAVE, BOB, pl, room.create)
    assert can_redact(version, ERIN, BOB, pl, room.create)  # same server b.test
    assert not client_can_redact(version, ERIN, BOB, pl, room.create)
    assert client_can_redact(version, BOB, BOB, pl, room.create)
    assert client_can_redact(version, CAROL, BOB, pl, room.create)
    assert not client_can_redact(version, DAVE, BOB, {**pl, "redact": 50}, room.create)


# --- auth events selection ----------------------------------------------------------------------


@ALL_VERSIONS
def test_auth_types_for_event(version: RoomVersion) -> None:
    create = [(CREATE, "")] if version.create_event_in_auth_events else []
    base = [*create, (POWER_LEVELS, ""), (MEMBER, ALICE)]
    assert auth_types_for_event(version, CREATE, "", ALICE, {}) == []
    assert auth_types_for_event(version, "m.room.message", None, ALICE, {}) == base
    assert auth_types_for_event(version, "m.room.topic", "", ALICE, {}) == base
    assert auth_types_for_event(version, MEMBER, BOB, ALICE, {"membership": "invite"}) == [
        *base,
        (MEMBER, BOB),
        (JOIN_RULES, ""),
    ]
    assert auth_types_for_event(version, MEMBER, ALICE, ALICE, {"membership": "join"}) == [
        *base,
        (JOIN_RULES, ""),
    ]
    assert auth_types_for_event(version, MEMBER, BOB, ALICE, {"membership": "ban"}) == [
        *base,
        (MEMBER, BOB),
    ]
    assert auth_types_for_event(version, MEMBER, ALICE, ALICE, {"membership": "knock"}) == [
        *base,
        (JOIN_RULES, ""),
    ]
    tpi = {"membership": "invite", "third_party_invite": {"signed": {"token": "t"}}}
    assert auth_types_for_event(version, MEMBER, BOB, ALICE, tpi) == [
        *base,
        (MEMBER, BOB),
        (JOIN_RULES, ""),
        (THIRD_PARTY_INVITE, "t"),
    ]
    restricted = {"membership": "join", "join_authorised_via_users_server": CAROL}
    assert auth_types_for_event(version, MEMBER, ALICE, ALICE, restricted) == [
        *base,
        (JOIN_RULES, ""),
        (MEMBER, CAROL),
    ]
    # Only joins name an authorising user; only invites a third-party token.
    assert (MEMBER, CAROL) not in auth_types_for_event(
        version, MEMBER, ALICE, ALICE, {**restricted, "membership": "leave"}
    )
    assert (THIRD_PARTY_INVITE, "t") not in auth_types_for_event(
        version, MEMBER, BOB, BOB, {**tpi, "membership": "join"}
    )


@ALL_VERSIONS
def test_check_auth_events_selection(version: RoomVersion) -> None:
    room = make_room(version)
    event = room.member(BOB, "join")
    wanted = [room.state[(POWER_LEVELS, "")], room.state[(JOIN_RULES, "")]]
    if version.create_event_in_auth_events:
        wanted.append(room.create)
    keyed = check_auth_events_selection(version, event, wanted)
    assert set(keyed) == {(e["type"], e["state_key"]) for e in wanted}
    check_auth(version, event, keyed, room.create)

    def deny(auth_events: list[JsonDict], fragment: str) -> None:
        with pytest.raises(MatrixError) as e:
            check_auth_events_selection(version, event, auth_events)
        assert e.value.code == Codes.FORBIDDEN
        assert fragment in e.value.message

    deny([*wanted, room.state[(POWER_LEVELS, "")]], "Duplicate")
    deny([*wanted, room.state[(MEMBER, ALICE)]], "not one the auth events selection picks")
    deny([*wanted, {"type": "m.x"}], "not a state event")
    deny([*wanted[:-1], dict(wanted[-1], room_id="!x:a.test")], "different room")
    if version.create_event_in_auth_events:
        deny(wanted[:-1], "do not include the m.room.create")
    else:
        deny([*wanted, room.create], "not one the auth events selection picks")


@ALL_VERSIONS
def test_create_event_has_no_auth_events(version: RoomVersion) -> None:
    room = Room(version)
    assert check_auth_events_selection(version, room.create, []) == {}
    with pytest.raises(MatrixError, match="no auth events"):
        check_auth_events_selection(version, room.create, [room.create])
