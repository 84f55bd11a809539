"""Room versions 1 to 12: the version table, the spec's signing vectors per version, event ID
formats, redaction rules, power level encodings, the auth-rule differences between versions,
and the receipt checks that refuse forged or malformed PDUs."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
from signedjson.key import generate_signing_key, get_verify_key
from unpaddedbase64 import encode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict
from homeserver.events.auth import (
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    check_auth,
    check_auth_events_selection,
    get_user_power_level,
)
from homeserver.events.format import (
    auth_event_ids,
    canonical_json,
    compute_event_id,
    compute_reference_hash,
    event_id_of,
    hash_and_sign_event,
    prev_event_ids,
    redact,
    verify_event_signature,
)
from homeserver.events.power_levels import get_named_level, parse_level
from homeserver.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    ROOM_VERSIONS,
    EventFormat,
    RedactionRules,
    RoomVersion,
    StateResolution,
)
from homeserver.events.validation import (
    ServerKey,
    auth_chain_rejections,
    check_pdu_format,
    check_signatures,
    validate_received_pdu,
)
from tests.spec_vectors import SPEC_KEY, spec_message_event, spec_minimal_event
from tests.state_res.room import A, B, C, D, Room

ALL = [ROOM_VERSIONS[str(n)] for n in range(1, 13)]
EVERY_VERSION = pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
MINIMAL_SIG = (
    "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
)
MESSAGE_SIG = (
    "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
)

# --- the table -------------------------------------------------------------------------------


def test_every_stable_version_is_known_and_v12_stays_the_default() -> None:
    assert list(ROOM_VERSIONS) == [str(n) for n in range(1, 13)]
    assert DEFAULT_ROOM_VERSION == "12"
    assert sorted(KNOWN_ROOM_VERSIONS, key=int) == [str(n) for n in range(1, 13)]
    assert all(KNOWN_ROOM_VERSIONS[v] is ROOM_VERSIONS[v] for v in KNOWN_ROOM_VERSIONS)


@EVERY_VERSION
def test_version_flags(version: RoomVersion) -> None:
    n = int(version.identifier)
    assert version.event_format is (
        EventFormat.V1 if n <= 2 else EventFormat.V3 if n == 3 else EventFormat.V4
    )
    assert version.state_resolution is (
        StateResolution.V1 if n == 1 else StateResolution.V2_1 if n == 12 else StateResolution.V2
    )
    expected_rules = {1: "v1", 6: "v6", 8: "v8", 9: "v9", 11: "v11"}
    rules = expected_rules[max(k for k in expected_rules if k <= n)]
    assert version.redaction_rules is RedactionRules(rules)
    assert version.special_case_aliases_auth is (n <= 5)
    assert version.redaction_in_auth_rules is (n <= 2)
    assert version.enforce_key_validity is (n >= 5)
    assert version.strict_canonical_json is version.limit_notifications_power_levels is (n >= 6)
    assert version.knock_join_rule is (n >= 7)
    assert version.restricted_join_rule is (n >= 8)
    assert version.knock_restricted_join_rule is version.integer_power_levels is (n >= 10)
    assert version.creator_in_content is (n <= 10)
    assert version.redacts_in_content is (n >= 11)
    assert version.room_id_is_create_event_hash is version.creators_have_infinite_power is (n == 12)


# --- spec test vectors -----------------------------------------------------------------------


@EVERY_VERSION
@pytest.mark.parametrize(
    ("make", "expected"), [(spec_minimal_event, MINIMAL_SIG), (spec_message_event, MESSAGE_SIG)]
)
def test_spec_signing_vectors(version: RoomVersion, make: Any, expected: str) -> None:
    event = make()
    hash_and_sign_event(event, "domain", SPEC_KEY, version)
    expected_hash = (
        "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
        if make is spec_minimal_event
        else "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    )
    assert event["hashes"] == {"sha256": expected_hash}
    signature = event["signatures"]["domain"]["ed25519:1"]
    # The vectors redact with the rules of v1-v10, which keep `origin`; v11 drops it.
    assert (signature == expected) is (int(version.identifier) <= 10)
    verify_key = get_verify_key(SPEC_KEY)
    assert verify_event_signature(event, "domain", verify_key, version)
    assert verify_event_signature(redact(event, version), "domain", verify_key, version)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            {},
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ",
        ),
        (
            {"one": 1, "two": "Two"},
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
        ),
    ],
)
def test_spec_json_signing_vectors(obj: JsonDict, expected: str) -> None:
    """appendices, "Signing JSON": the signature of canonical JSON with the spec's key."""
    assert encode_base64(SPEC_KEY.sign(canonical_json(obj)).signature) == expected


def test_spec_message_vector_redacts_to_the_signed_form() -> None:
    event = spec_message_event()
    hash_and_sign_event(event, "domain", SPEC_KEY, ROOM_VERSIONS["1"])
    redacted = redact(event, ROOM_VERSIONS["1"])
    assert redacted["content"] == {} and "unsigned" not in redacted
    assert redacted["event_id"] == "$0:domain" and redacted["origin"] == "domain"


def test_event_id_formats() -> None:
    event: JsonDict = {
        "type": "m.room.message",
        "room_id": "!r:s",
        "sender": "@u:s",
        "origin_server_ts": 5,
        "depth": 2,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "content": {},
        "hashes": {"sha256": "abc"},
    }
    # Search a timestamp whose hash has a character where the two alphabets differ.
    while "+" not in (std := encode_base64(compute_reference_hash(event, ROOM_VERSIONS["3"]))):
        event["origin_server_ts"] += 1
    assert compute_event_id(event, ROOM_VERSIONS["3"]) == "$" + std
    url = compute_event_id(event, ROOM_VERSIONS["4"])
    assert url == "$" + std.replace("+", "-").replace("/", "_")
    for n in ("1", "2"):
        with pytest.raises(ValueError):
            compute_event_id(event, ROOM_VERSIONS[n])
        assert event_id_of({**event, "event_id": "$e:s"}, ROOM_VERSIONS[n]) == "$e:s"
    v1_event = {**event, "prev_events": [["$p:s", {"sha256": "x"}]], "auth_events": [["$a:s", {}]]}
    assert prev_event_ids(v1_event, ROOM_VERSIONS["1"]) == ["$p:s"]
    assert auth_event_ids(v1_event, ROOM_VERSIONS["2"]) == ["$a:s"]
    assert prev_event_ids(event, ROOM_VERSIONS["5"]) == ["$p"]


# --- redaction -------------------------------------------------------------------------------


@EVERY_VERSION
def test_redaction_rules_per_version(version: RoomVersion) -> None:
    n = int(version.identifier)

    def kept(event_type: str, content: JsonDict) -> JsonDict:
        event = {"type": event_type, "state_key": "", "content": content, "origin": "s"}
        return dict(redact(event, version)["content"])

    assert kept("m.room.aliases", {"aliases": ["#a:s"]}) == (
        {"aliases": ["#a:s"]} if n <= 5 else {}
    )
    assert kept("m.room.join_rules", {"join_rule": "restricted", "allow": []}) == (
        {"join_rule": "restricted", "allow": []} if n >= 8 else {"join_rule": "restricted"}
    )
    member = {"membership": "join", "join_authorised_via_users_server": "@x:s", "x": 1}
    assert kept(MEMBER, member) == (
        {"membership": "join", "join_authorised_via_users_server": "@x:s"}
        if n >= 9
        else {"membership": "join"}
    )
    assert kept("m.room.create", {"creator": "@c:s", "m.federate": False}) == (
        {"creator": "@c:s", "m.federate": False} if n >= 11 else {"creator": "@c:s"}
    )
    assert ("invite" in kept(POWER_LEVELS, {"invite": 0, "ban": 50})) is (n >= 11)
    assert kept("m.room.redaction", {"redacts": "$x"}) == ({"redacts": "$x"} if n >= 11 else {})
    top = redact({"type": "t", "content": {}, "origin": "s", "membership": "m"}, version)
    assert ("origin" in top and "membership" in top) is (n <= 10)


# --- power levels ----------------------------------------------------------------------------


@EVERY_VERSION
def test_power_level_encodings(version: RoomVersion) -> None:
    n = int(version.identifier)
    assert parse_level(50, version) == 50
    for stringy, value in (("50", 50), (" +0100 ", 100), ("-5", -5)):
        assert parse_level(stringy, version) == (value if n <= 9 else None)
    for bad in ("5.0", "1e3", "", "++1", True, None, [], 2**53):
        assert parse_level(bad, version) is None
    assert parse_level(50.7, version) == (50 if n <= 5 else None)
    content = {"users": {B: "75"}, "ban": "20"}
    expected = 75 if n <= 9 else 0
    assert get_user_power_level(version, B, content, None) == expected
    assert get_named_level(content, "ban", version=version) == (20 if n <= 9 else 50)


@EVERY_VERSION
def test_stringy_power_levels_in_an_event(version: RoomVersion) -> None:
    room = Room(version)
    users = {} if version.creators_have_infinite_power else {A: "100"}
    content = {"users": {**users, C: "50"}, "ban": "50"}
    if int(version.identifier) <= 9:
        room.add("pl2", POWER_LEVELS, A, content, ["cjoin"])
        room.add("ban", MEMBER, C, {"membership": "ban"}, ["pl2"], state_key=D)
    else:
        with pytest.raises(MatrixError, match="integer"):
            room.add("pl2", POWER_LEVELS, A, content, ["cjoin"])


# --- auth-rule differences -------------------------------------------------------------------


@EVERY_VERSION
def test_aliases_special_case_before_v6(version: RoomVersion) -> None:
    room = Room(version)
    # C (level 0, state_default 50) may set the aliases of her own server only in v1-v5.
    if version.special_case_aliases_auth:
        room.add("al", "m.room.aliases", C, {"aliases": ["#x:c.test"]}, ["cjoin"], "c.test")
        with pytest.raises(MatrixError, match="aliases"):
            room.add("al2", "m.room.aliases", C, {"aliases": []}, ["cjoin"], "a.test")
    else:
        with pytest.raises(MatrixError, match="power level"):
            room.add("al", "m.room.aliases", C, {"aliases": ["#x:c.test"]}, ["cjoin"], "c.test")


@EVERY_VERSION
def test_redaction_auth_rule_only_in_v1_v2(version: RoomVersion) -> None:
    room = Room(version)
    content = {"redacts": "$t:b.test"} if version.redacts_in_content else {}
    redaction: JsonDict = {"type": "m.room.redaction", "sender": C, "room_id": room.room_id}
    redaction.update(content=content, redacts="$t:b.test", event_id="$r:c.test")
    state = {k: room.events[v] for k, v in room.after["cjoin"].items()}
    create = room.create if version.room_id_is_create_event_hash else None
    if version.redaction_in_auth_rules:
        with pytest.raises(MatrixError, match="redact"):
            check_auth(version, redaction, state, create)
        check_auth(version, {**redaction, "redacts": "$t:c.test"}, state, create)  # same server
    else:
        check_auth(version, redaction, state, create)  # checked on redaction, not by auth


@EVERY_VERSION
def test_notifications_levels_limited_from_v6(version: RoomVersion) -> None:
    room = Room(version)  # B is a moderator at 50
    users = {B: 50} if version.creators_have_infinite_power else {A: 100, B: 50}
    content = {"users": users, "notifications": {"room": 100}}
    if version.limit_notifications_power_levels:
        with pytest.raises(MatrixError, match="notifications"):
            room.add("pl2", POWER_LEVELS, B, content, ["cjoin"])
    else:
        room.add("pl2", POWER_LEVELS, B, content, ["cjoin"])


@EVERY_VERSION
def test_join_rules_per_version(version: RoomVersion) -> None:
    n = int(version.identifier)
    for rule, since in (("knock", 7), ("restricted", 8), ("knock_restricted", 10)):
        room = Room(version)
        room.add("jr2", JOIN_RULES, A, {"join_rule": rule}, ["cjoin"])
        if rule.startswith("knock") and n >= since:
            room.add("knock", MEMBER, D, {"membership": "knock"}, ["jr2"], state_key=D)
        else:
            with pytest.raises(MatrixError):
                room.add("knock", MEMBER, D, {"membership": "knock"}, ["jr2"], state_key=D)
        # A join rule the version does not know allows no join, not even a public one.
        if n < since:
            with pytest.raises(MatrixError):
                room.add("join", MEMBER, D, {"membership": "join"}, ["jr2"], state_key=D)


@EVERY_VERSION
def test_v1_v10_create_needs_creator_and_v11_takes_the_sender(version: RoomVersion) -> None:
    room = Room(version)
    create = copy.deepcopy(room.create)
    create["content"].pop("creator", None)
    if version.creator_in_content:
        with pytest.raises(MatrixError, match="creator"):
            check_auth(version, create, {})
    else:
        check_auth(version, create, {})
        assert get_user_power_level(version, A, None, create) >= 100


# --- forged and malformed PDUs ---------------------------------------------------------------


class Servers:
    def __init__(self) -> None:
        self.keys = {s: generate_signing_key("1") for s in ("a.test", "b.test", "c.test")}

    def lookup(self, server: str, key_id: str) -> ServerKey | None:
        key = self.keys.get(server)
        if key is None or key_id != "ed25519:1":
            return None
        return ServerKey(get_verify_key(key), valid_until_ts=10**13)

    def sign(self, event: JsonDict, version: RoomVersion, *servers: str) -> JsonDict:
        event = copy.deepcopy(event)
        for i, server in enumerate(servers):
            if i == 0:
                hash_and_sign_event(event, server, self.keys[server], version)
            else:
                from homeserver.events.format import sign_event

                sign_event(event, server, self.keys[server], version)
        return event


def pdu(version: RoomVersion, **overrides: Any) -> JsonDict:
    event: JsonDict = {
        "type": "m.room.topic",
        "state_key": "",
        "sender": "@u:b.test",
        "room_id": "!r:a.test",
        "content": {"topic": "t"},
        "origin_server_ts": 1000,
        "depth": 5,
        "prev_events": [["$p:a.test", {}]] if version.event_id_in_event else ["$p"],
        "auth_events": [["$a:a.test", {}]] if version.event_id_in_event else ["$a"],
    }
    if version.event_id_in_event:
        event["event_id"] = "$e:b.test"
    if version.room_id_is_create_event_hash:
        event["room_id"] = "!" + "r" * 43
    event.update(overrides)
    return event


@EVERY_VERSION
def test_a_valid_pdu_passes_and_a_bad_signature_is_refused(version: RoomVersion) -> None:
    servers = Servers()
    event = servers.sign(pdu(version), version, "b.test")
    assert validate_received_pdu(event, version, servers.lookup) == event
    forged = copy.deepcopy(event)
    forged["content"]["topic"] = "changed"
    forged["hashes"]["sha256"] = encode_base64(hashlib.sha256(b"x").digest())
    with pytest.raises(MatrixError) as e:
        validate_received_pdu(forged, version, servers.lookup)
    assert e.value.code == Codes.FORBIDDEN
    # Signed by another server than the sender's (a mismatched origin): refused.
    other = servers.sign(pdu(version), version, "c.test")
    with pytest.raises(MatrixError, match="b.test"):
        check_signatures(other, version, servers.lookup)


@EVERY_VERSION
def test_a_content_hash_mismatch_redacts_instead_of_dropping(version: RoomVersion) -> None:
    servers = Servers()
    event = servers.sign(pdu(version), version, "b.test")
    event["content"]["topic"] = "tampered after signing"  # the signature covers no content
    received = validate_received_pdu(event, version, servers.lookup)
    assert received == redact(event, version)
    assert received["content"] == {}


def test_v1_v2_also_need_the_event_id_server_and_v5_key_validity() -> None:
    servers = Servers()
    v1 = ROOM_VERSIONS["1"]
    event = servers.sign(pdu(v1, event_id="$e:c.test"), v1, "b.test")
    with pytest.raises(MatrixError, match="c.test"):
        check_signatures(event, v1, servers.lookup)
    check_signatures(
        servers.sign(pdu(v1, event_id="$e:c.test"), v1, "b.test", "c.test"), v1, servers.lookup
    )
    for n, ok in (("4", True), ("5", False)):
        version = ROOM_VERSIONS[n]
        late = servers.sign(pdu(version, origin_server_ts=10**13 + 1), version, "b.test")
        if ok:
            check_signatures(late, version, servers.lookup)
        else:
            with pytest.raises(MatrixError):
                check_signatures(late, version, servers.lookup)


def test_a_restricted_join_needs_the_authorising_server_signature() -> None:
    servers = Servers()
    v10 = ROOM_VERSIONS["10"]
    join = pdu(
        v10,
        type=MEMBER,
        state_key="@u:b.test",
        content={"membership": "join", "join_authorised_via_users_server": "@x:c.test"},
    )
    with pytest.raises(MatrixError, match="c.test"):
        check_signatures(servers.sign(join, v10, "b.test"), v10, servers.lookup)
    check_signatures(servers.sign(join, v10, "b.test", "c.test"), v10, servers.lookup)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"depth": 2**63}, "depth"),
        ({"depth": -1}, "depth"),
        ({"content": {"n": 2**53}}, "range"),
        ({"origin_server_ts": -(2**60)}, "range"),
        ({"content": {"f": 1.5}}, "loat"),
        ({"prev_events": "$p"}, "prev_events"),
        ({"auth_events": [1]}, "auth_events"),
        ({"prev_events": [f"$p{i}" for i in range(21)]}, "more than"),
        ({"sender": "not-a-user"}, "sender"),
        ({"room_id": "#alias:a.test"}, "room_id"),
        ({"content": []}, "content"),
    ],
)
def test_malformed_pdus_are_bad_json(overrides: JsonDict, fragment: str) -> None:
    version = ROOM_VERSIONS["10"]
    with pytest.raises(MatrixError, match=fragment) as e:
        check_pdu_format(pdu(version, **overrides), version)
    assert e.value.code in (Codes.BAD_JSON, Codes.TOO_LARGE)


def test_v12_room_ids_are_create_event_hashes() -> None:
    v12 = ROOM_VERSIONS["12"]
    check_pdu_format(pdu(v12, room_id="!" + "A" * 42 + "_"), v12)
    for bad in ("!r:a.test", "!" + "A" * 42 + "+", "!" + "A" * 44):
        with pytest.raises(MatrixError, match="hash"):
            check_pdu_format(pdu(v12, room_id=bad), v12)


def test_out_of_range_integers_are_tolerated_before_v6_but_not_depth() -> None:
    v5 = ROOM_VERSIONS["5"]
    check_pdu_format(pdu(v5, content={"n": 2**60, "f": 1.5}), v5)
    with pytest.raises(MatrixError, match="depth"):
        check_pdu_format(pdu(v5, depth=2**63), v5)


@pytest.mark.parametrize("key", ["prev_events", "auth_events"])
def test_an_event_listing_itself_is_refused(key: str) -> None:
    v1 = ROOM_VERSIONS["1"]
    with pytest.raises(MatrixError, match="itself"):
        check_pdu_format(pdu(v1, **{key: [["$e:b.test", {}]]}), v1)
    v10 = ROOM_VERSIONS["10"]
    event = pdu(v10, prev_events=["$p"])
    with pytest.raises(MatrixError, match="twice"):
        check_pdu_format({**event, "prev_events": ["$p", "$p"]}, v10)


@pytest.mark.parametrize("version", [ROOM_VERSIONS[n] for n in ("2", "10", "12")], ids=str)
def test_auth_events_from_another_room_are_refused(version: RoomVersion) -> None:
    room, other = Room(version), Room(version)
    other.room_id = "!other:a.test"
    event = copy.deepcopy(room.events[room.ids["cjoin"]])
    foreign = copy.deepcopy(room.events[room.ids["pl"]])
    foreign["room_id"] = "!elsewhere:a.test"
    auth = [room.events[i] for i in auth_event_ids(event, version)]
    auth = [foreign if a["type"] == POWER_LEVELS else a for a in auth]
    with pytest.raises(MatrixError, match="different room"):
        check_auth_events_selection(version, event, auth)


@pytest.mark.parametrize("version", [ROOM_VERSIONS[n] for n in ("2", "10", "12")], ids=str)
def test_a_forged_power_level_in_an_auth_chain_rejects_its_dependants(
    version: RoomVersion,
) -> None:
    room = Room(version)
    # C (level 0) "grants" herself 100 in a power levels event built by hand, then bans B
    # citing it: the forged event fails its own auth, and so does the ban that relies on it.
    forged_levels = {"users": {C: 100}}
    if not version.creators_have_infinite_power:
        forged_levels["users"][A] = 100
    state = room.after["cjoin"]
    forged = room.raw(POWER_LEVELS, C, forged_levels, ["cjoin"], state_key="")
    forged_id = room.store_raw("forged", forged)
    ban = room.raw(
        MEMBER,
        C,
        {"membership": "ban"},
        ["forged"],
        state_key=B,
        state={**state, (POWER_LEVELS, ""): forged_id},
    )
    ban_id = room.store_raw("ban", ban)
    rejected = auth_chain_rejections(room.events, version)
    assert set(rejected) == {forged_id, ban_id}
    assert "power level" in rejected[forged_id]
    assert "rejected" in rejected[ban_id]
