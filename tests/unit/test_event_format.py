"""Room versions, and the PDU format: hashes, redaction, signing, event and room IDs."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
from signedjson.key import generate_signing_key, get_verify_key
from unpaddedbase64 import encode_base64

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.types import JsonDict
from homeserver.events.format import (
    MAX_PDU_BYTES,
    add_content_hash,
    canonical_json,
    check_event_size_and_shape,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    compute_room_id_v12,
    hash_and_sign_event,
    redact,
    sign_event,
    verify_event_signature,
)
from homeserver.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    RedactionRules,
    RoomVersion,
)
from tests.spec_vectors import SPEC_KEY, spec_message_event, spec_minimal_event

V10, V11, V12 = (KNOWN_ROOM_VERSIONS[v] for v in ("10", "11", "12"))
ALL_VERSIONS = pytest.mark.parametrize("version", [V10, V11, V12], ids=lambda v: f"v{v.identifier}")

# --- room versions ------------------------------------------------------------------------------


def test_known_room_versions() -> None:
    # issue 17: every stable version is created and sent in; v12 stays the default.
    assert sorted(KNOWN_ROOM_VERSIONS, key=int) == [str(n) for n in range(1, 13)]
    assert DEFAULT_ROOM_VERSION == "12"
    assert all(v.stable for v in KNOWN_ROOM_VERSIONS.values())


@pytest.mark.parametrize(
    ("version", "creator_in_content", "rules", "hash_room_id"),
    [
        (V10, True, RedactionRules.V9, False),
        (V11, False, RedactionRules.V11, False),
        (V12, False, RedactionRules.V11, True),
    ],
)
def test_room_version_flags(
    version: RoomVersion, creator_in_content: bool, rules: RedactionRules, hash_room_id: bool
) -> None:
    assert version.creator_in_content is creator_in_content
    assert version.redaction_rules is rules
    assert version.redacts_in_content is (not creator_in_content)
    assert version.room_id_is_create_event_hash is hash_room_id
    assert version.create_event_in_auth_events is (not hash_room_id)
    assert version.creators_have_infinite_power is hash_room_id


# --- canonical JSON and content hash ------------------------------------------------------------


def test_canonical_json_sorts_keys_without_whitespace_and_utf8() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == (
        '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()
    )


def test_content_hash_matches_spec_vectors() -> None:
    assert compute_content_hash(spec_minimal_event()) == (
        "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    )
    assert compute_content_hash(spec_message_event()) == (
        "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    )


def test_content_hash_ignores_unsigned_signatures_and_hashes() -> None:
    event = spec_minimal_event()
    base = compute_content_hash(event)
    event["unsigned"] = {"age": 5}
    event["signatures"] = {"other": {"ed25519:x": "sig"}}
    event["hashes"] = {"sha256": "whatever"}
    assert compute_content_hash(event) == base
    event["content"] = {"x": 1}
    assert compute_content_hash(event) != base


def test_content_hash_is_sha256_of_canonical_json() -> None:
    event = {"type": "X", "content": {"b": 2, "a": 1}, "unsigned": {"u": 1}}
    expected = hashlib.sha256(b'{"content":{"a":1,"b":2},"type":"X"}').digest()
    assert compute_content_hash(event) == encode_base64(expected)


def test_add_content_hash() -> None:
    event = spec_minimal_event()
    add_content_hash(event)
    assert event["hashes"] == {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"}


# --- signing (spec test vectors) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            spec_minimal_event,
            "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAW"
            "bOoMszkwsQma+lYAg",
        ),
        (
            spec_message_event,
            "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYH"
            "YMGCA5McEiVPdhzBA",
        ),
    ],
)
def test_signing_matches_spec_vectors(make: Any, expected: str) -> None:
    # The vectors predate v11 and keep `origin`: the v9 redaction rules (room version 10).
    event = make()
    hash_and_sign_event(event, "domain", SPEC_KEY, V10)
    assert event["signatures"] == {"domain": {"ed25519:1": expected}}
    assert event["unsigned"] == {"age_ts": 1000000}  # untouched
    assert verify_event_signature(event, "domain", get_verify_key(SPEC_KEY), V10)


def test_v11_signature_does_not_cover_origin() -> None:
    event = spec_minimal_event()
    hash_and_sign_event(event, "domain", SPEC_KEY, V11)
    assert event["signatures"]["domain"]["ed25519:1"] != (
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
    )
    event["origin"] = "elsewhere"  # not protected from redaction in v11, so not signed
    assert verify_event_signature(event, "domain", get_verify_key(SPEC_KEY), V11)


@ALL_VERSIONS
def test_sign_and_verify_round_trip(version: RoomVersion) -> None:
    key = generate_signing_key("abc")
    event: JsonDict = {
        "type": "m.room.message",
        "room_id": "!r:hs.test",
        "sender": "@u:hs.test",
        "content": {"body": "hi"},
        "origin_server_ts": 1,
        "depth": 2,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "unsigned": {"age": 1},
    }
    hash_and_sign_event(event, "hs.test", key, version)
    verify_key = get_verify_key(key)
    assert set(event["signatures"]["hs.test"]) == {"ed25519:abc"}
    assert verify_event_signature(event, "hs.test", verify_key, version)
    # The signature covers the redacted form: it still holds for a redacted copy, and for an
    # event whose message content changed (the content hash, checked separately, catches it).
    assert verify_event_signature(redact(event, version), "hs.test", verify_key, version)
    tampered = copy.deepcopy(event)
    tampered["content"]["body"] = "bye"
    assert verify_event_signature(tampered, "hs.test", verify_key, version)
    assert compute_content_hash(tampered) != tampered["hashes"]["sha256"]
    # Essential keys are covered.
    for key_name, value in (("sender", "@evil:hs.test"), ("depth", 3), ("prev_events", [])):
        tampered = copy.deepcopy(event)
        tampered[key_name] = value
        assert not verify_event_signature(tampered, "hs.test", verify_key, version)
    tampered = copy.deepcopy(event)
    tampered["hashes"]["sha256"] = "AAAA"
    assert not verify_event_signature(tampered, "hs.test", verify_key, version)


def test_sign_keeps_other_servers_signatures() -> None:
    event = spec_minimal_event()
    event["signatures"] = {"other.test": {"ed25519:o": "sig"}}
    hash_and_sign_event(event, "domain", SPEC_KEY, V10)
    assert event["signatures"]["other.test"] == {"ed25519:o": "sig"}
    assert event["signatures"]["domain"]["ed25519:1"].startswith("KxwGjPSD")


def test_sign_event_without_hash_signs_what_is_there() -> None:
    event = spec_minimal_event()
    sign_event(event, "domain", SPEC_KEY, V10)
    assert "sha256" not in event["hashes"]
    assert verify_event_signature(event, "domain", get_verify_key(SPEC_KEY), V10)


@pytest.mark.parametrize(
    "signatures",
    [
        None,
        {},
        {"domain": {}},
        {"domain": "x"},
        {"other": {"ed25519:1": "x"}},
        {"domain": {"ed25519:1": "not base64 !!"}},
        {"domain": {"ed25519:1": "AAAA"}},
        {"domain": {"ed25519:1": 5}},
    ],
)
def test_verify_rejects_missing_or_bad_signatures(signatures: Any) -> None:
    event = spec_minimal_event()
    add_content_hash(event)
    if signatures is None:
        del event["signatures"]
    else:
        event["signatures"] = signatures
    assert not verify_event_signature(event, "domain", get_verify_key(SPEC_KEY), V10)


def test_verify_rejects_another_key() -> None:
    event = spec_minimal_event()
    hash_and_sign_event(event, "domain", SPEC_KEY, V10)
    other = generate_signing_key("1")
    assert not verify_event_signature(event, "domain", get_verify_key(other), V10)


# --- redaction ----------------------------------------------------------------------------------

ALL_TOP_LEVEL = {
    "event_id": "$e",
    "type": "m.room.message",
    "room_id": "!r:s",
    "sender": "@u:s",
    "state_key": "",
    "content": {},
    "hashes": {"sha256": "h"},
    "signatures": {"s": {}},
    "depth": 1,
    "prev_events": [],
    "prev_state": [],
    "auth_events": [],
    "origin": "s",
    "origin_server_ts": 1,
    "membership": "join",
    "unsigned": {"age": 1},
    "redacts": "$x",
    "custom": "x",
}
V9_TOP_LEVEL = {
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
V11_TOP_LEVEL = V9_TOP_LEVEL - {"origin", "membership", "prev_state"}


@pytest.mark.parametrize(
    ("version", "kept"), [(V10, V9_TOP_LEVEL), (V11, V11_TOP_LEVEL), (V12, V11_TOP_LEVEL)]
)
def test_redact_top_level_keys(version: RoomVersion, kept: set[str]) -> None:
    assert set(redact(dict(ALL_TOP_LEVEL), version)) == kept


# Every content key an event type might carry, and what each redaction rule set keeps.
CONTENT_CASES: list[tuple[str, JsonDict, set[str], set[str]]] = [
    (
        "m.room.member",
        {
            "membership": "join",
            "join_authorised_via_users_server": "@a:s",
            "displayname": "A",
            "avatar_url": "mxc://s/a",
            "reason": "r",
            "is_direct": True,
        },
        {"membership", "join_authorised_via_users_server"},
        {"membership", "join_authorised_via_users_server"},
    ),
    (
        "m.room.create",
        {
            "creator": "@a:s",
            "room_version": "10",
            "m.federate": False,
            "type": "m.space",
            "predecessor": {"room_id": "!o:s"},
            "additional_creators": ["@b:s"],
        },
        {"creator"},
        {"creator", "room_version", "m.federate", "type", "predecessor", "additional_creators"},
    ),
    (
        "m.room.join_rules",
        {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": "!a:s"}],
            "other": 1,
        },
        {"join_rule", "allow"},
        {"join_rule", "allow"},
    ),
    (
        "m.room.power_levels",
        {
            "ban": 50,
            "events": {"m.x": 1},
            "events_default": 0,
            "invite": 0,
            "kick": 50,
            "redact": 50,
            "state_default": 50,
            "users": {"@a:s": 100},
            "users_default": 0,
            "notifications": {"room": 50},
        },
        {
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        },
        {
            "ban",
            "events",
            "events_default",
            "invite",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        },
    ),
    (
        "m.room.history_visibility",
        {"history_visibility": "shared", "other": 1},
        {"history_visibility"},
        {"history_visibility"},
    ),
    ("m.room.redaction", {"redacts": "$x", "reason": "spam"}, set(), {"redacts"}),
    ("m.room.message", {"body": "hi", "msgtype": "m.text"}, set(), set()),
    ("m.room.name", {"name": "Room"}, set(), set()),
    ("m.room.topic", {"topic": "t"}, set(), set()),
    ("m.room.third_party_invite", {"display_name": "d", "public_key": "k"}, set(), set()),
    ("m.room.guest_access", {"guest_access": "can_join"}, set(), set()),
    ("m.room.canonical_alias", {"alias": "#a:s"}, set(), set()),
    ("m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"}, set(), set()),
    ("m.room.tombstone", {"replacement_room": "!n:s", "body": "b"}, set(), set()),
]


@pytest.mark.parametrize(
    ("event_type", "content", "v9_kept", "v11_kept"),
    CONTENT_CASES,
    ids=[c[0] for c in CONTENT_CASES],
)
@ALL_VERSIONS
def test_redact_content_per_event_type(
    version: RoomVersion, event_type: str, content: JsonDict, v9_kept: set[str], v11_kept: set[str]
) -> None:
    event = {"type": event_type, "state_key": "", "sender": "@a:s", "content": content}
    kept = v9_kept if version.redaction_rules is RedactionRules.V9 else v11_kept
    redacted = redact(event, version)
    assert redacted["content"] == {k: content[k] for k in kept}


@ALL_VERSIONS
def test_redact_member_third_party_invite(version: RoomVersion) -> None:
    signed = {"mxid": "@b:s", "token": "t", "signatures": {"id": {"ed25519:0": "sig"}}}
    event = {
        "type": "m.room.member",
        "state_key": "@b:s",
        "content": {
            "membership": "invite",
            "third_party_invite": {"display_name": "b", "signed": signed},
        },
    }
    content = redact(event, version)["content"]
    if version.redaction_rules is RedactionRules.V9:
        assert content == {"membership": "invite"}
    else:  # v11: only `signed` survives inside third_party_invite
        assert content == {"membership": "invite", "third_party_invite": {"signed": signed}}


def test_redact_third_party_invite_without_signed_v11() -> None:
    event: JsonDict = {
        "type": "m.room.member",
        "content": {"membership": "invite", "third_party_invite": {"display_name": "b"}},
    }
    assert redact(event, V11)["content"] == {"membership": "invite", "third_party_invite": {}}
    event["content"]["third_party_invite"] = "junk"
    assert redact(event, V11)["content"] == {"membership": "invite"}


@ALL_VERSIONS
def test_redact_does_not_mutate_or_share(version: RoomVersion) -> None:
    event = {
        "type": "m.room.power_levels",
        "state_key": "",
        "sender": "@a:s",
        "content": {"users": {"@a:s": 100}, "x": 1},
        "unsigned": {"age": 1},
        "prev_events": ["$p"],
        "signatures": {"s": {"ed25519:1": "x"}},
    }
    original = copy.deepcopy(event)
    redacted = redact(event, version)
    assert event == original
    redacted["content"]["users"]["@b:s"] = 1
    redacted["prev_events"].append("$q")
    redacted["signatures"]["s"]["ed25519:2"] = "y"
    assert event == original
    assert "unsigned" not in redacted


@ALL_VERSIONS
def test_redact_is_idempotent(version: RoomVersion) -> None:
    event = dict(
        ALL_TOP_LEVEL, type="m.room.member", content={"membership": "join", "displayname": "x"}
    )
    once = redact(event, version)
    assert redact(once, version) == once


def test_redact_event_without_or_with_bad_content() -> None:
    assert redact({"type": "m.room.message", "sender": "@a:s"}, V11) == {
        "type": "m.room.message",
        "sender": "@a:s",
    }
    assert redact({"type": "m.room.member", "content": "junk"}, V10) == {
        "type": "m.room.member",
        "content": {},
    }
    assert redact({"type": 5, "content": {"a": 1}}, V11) == {"type": 5, "content": {}}


# --- reference hash, event ID, room ID ------------------------------------------------------------


def test_event_id_against_hand_computed_value() -> None:
    event = {
        "type": "m.room.message",
        "room_id": "!r:s",
        "sender": "@u:s",
        "origin": "s",
        "origin_server_ts": 5,
        "depth": 2,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "content": {"body": "hello"},
        "hashes": {"sha256": "abc"},
        "signatures": {"s": {"ed25519:1": "sig"}},
        "unsigned": {"age": 3},
    }
    # The v9-redacted event without signatures/unsigned, written out by hand in canonical form.
    v10_bytes = (
        b'{"auth_events":["$a"],"content":{},"depth":2,"hashes":{"sha256":"abc"},'
        b'"origin":"s","origin_server_ts":5,"prev_events":["$p"],"room_id":"!r:s",'
        b'"sender":"@u:s","type":"m.room.message"}'
    )
    v11_bytes = v10_bytes.replace(b'"origin":"s",', b"")
    for version, expected in ((V10, v10_bytes), (V11, v11_bytes), (V12, v11_bytes)):
        digest = hashlib.sha256(expected).digest()
        assert compute_reference_hash(event, version) == digest
        assert compute_event_id(event, version) == "$" + encode_base64(digest, urlsafe=True)


@ALL_VERSIONS
def test_event_id_shape_and_stability(version: RoomVersion) -> None:
    event: JsonDict = {
        "type": "m.room.member",
        "state_key": "@u:s",
        "sender": "@u:s",
        "room_id": "!r:s",
        "content": {"membership": "join", "displayname": "U"},
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "origin_server_ts": 0,
        "hashes": {"sha256": "h"},
    }
    event_id = compute_event_id(event, version)
    assert event_id.startswith("$") and len(event_id) == 44
    assert not set(event_id) & set("+/=")
    # Unaffected by what redaction, signatures or unsigned data change...
    assert compute_event_id(redact(event, version), version) == event_id
    assert compute_event_id(dict(event, unsigned={"age": 9}), version) == event_id
    assert compute_event_id(dict(event, signatures={"s": {"k": "v"}}), version) == event_id
    assert (
        compute_event_id(dict(event, content={**event["content"], "displayname": "V"}), version)
        == event_id
    )
    # ... but not by essential keys.
    assert compute_event_id(dict(event, content={"membership": "leave"}), version) != event_id
    assert compute_event_id(dict(event, depth=2), version) != event_id


def test_v12_room_id_is_create_event_reference_hash() -> None:
    create = {
        "type": "m.room.create",
        "state_key": "",
        "sender": "@u:s",
        "content": {"room_version": "12"},
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "origin_server_ts": 0,
        "hashes": {"sha256": "h"},
    }
    room_id = compute_room_id_v12(create, V12)
    assert room_id.startswith("!") and ":" not in room_id and len(room_id) == 44
    assert room_id == "!" + compute_event_id(create, V12)[1:]
    assert room_id == "!" + encode_base64(compute_reference_hash(create, V12), urlsafe=True)
    other = dict(create, content={"room_version": "12", "additional_creators": ["@b:s"]})
    assert compute_room_id_v12(other, V12) != room_id


@pytest.mark.parametrize("version", [V10, V11], ids=["v10", "v11"])
def test_room_id_derivation_refused_before_v12(version: RoomVersion) -> None:
    with pytest.raises(ValueError):
        compute_room_id_v12({"type": "m.room.create"}, version)


# --- size and shape -----------------------------------------------------------------------------


def small_event(**overrides: Any) -> JsonDict:
    event: JsonDict = {
        "type": "m.room.message",
        "room_id": "!r:s",
        "sender": "@u:s",
        "content": {"body": "x"},
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "origin_server_ts": 0,
    }
    event.update(overrides)
    return event


def test_size_and_shape_accepts_a_normal_event() -> None:
    check_event_size_and_shape(small_event())
    check_event_size_and_shape(small_event(state_key="", type="m.room.topic"))


def test_size_limit_is_65536_bytes_of_canonical_json() -> None:
    event = small_event()
    base = len(canonical_json(event))
    event["content"]["body"] = "x" * (MAX_PDU_BYTES - base + 1)  # exactly at the limit
    assert len(canonical_json(event)) == MAX_PDU_BYTES
    check_event_size_and_shape(event)
    event["content"]["body"] += "x"
    with pytest.raises(MatrixError) as e:
        check_event_size_and_shape(event)
    assert e.value.code == Codes.TOO_LARGE


@pytest.mark.parametrize("key", ["type", "state_key", "sender", "room_id", "event_id"])
def test_keys_over_255_bytes_are_too_large(key: str) -> None:
    prefix = {"type": "", "state_key": "", "sender": "@", "room_id": "!", "event_id": "$"}[key]
    ok = prefix + "a" * (255 - len(prefix))
    check_event_size_and_shape(small_event(**{key: ok}))
    # Bytes, not characters: 128 two-byte characters are 256 bytes.
    for too_long in (ok + "a", prefix + "é" * 128):
        with pytest.raises(MatrixError) as e:
            check_event_size_and_shape(small_event(**{key: too_long}))
        assert e.value.code == Codes.TOO_LARGE


@pytest.mark.parametrize(
    ("overrides", "drop"),
    [
        ({"type": 5}, None),
        ({}, "type"),
        ({"state_key": 1}, None),
        ({"sender": None}, None),
        ({"room_id": ["!r:s"]}, None),
        ({"content": {"n": 1.5}}, None),
        ({"content": {"n": 2**53}}, None),
        ({"depth": -(2**53)}, None),
    ],
)
def test_shape_errors_are_bad_json(overrides: JsonDict, drop: str | None) -> None:
    event = small_event(**overrides)
    if drop:
        del event[drop]
    with pytest.raises(MatrixError) as e:
        check_event_size_and_shape(event)
    assert e.value.code == Codes.BAD_JSON


def test_canonical_integer_bounds_are_accepted() -> None:
    check_event_size_and_shape(small_event(content={"a": 2**53 - 1, "b": -(2**53) + 1}))
