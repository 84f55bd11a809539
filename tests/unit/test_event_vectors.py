"""The spec's test vectors, for every room version they apply to (issue 17).

From the appendices: unpadded base64 (standard and URL-safe), the canonical JSON examples, JSON
signing and event signing with the seed key `YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1` as
`ed25519:1` of `domain`. The spec gives no reference hashes, so each version's is checked
against the redacted form written out by hand from that version's redaction rules: what it
hashes, its event ID (v1-v2 carry their own, v3 standard base64, v4+ URL-safe) and, in v12,
the room ID. `tests/state_res/test_synapse_event_format.py` compares the same functions with
Synapse's on random events.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest
from signedjson.key import get_verify_key
from unpaddedbase64 import decode_base64, encode_base64

from homeserver.core.types import JsonDict
from homeserver.events.format import (
    canonical_json,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    compute_room_id_v12,
    event_id_of,
    hash_and_sign_event,
    redact,
    verify_event_signature,
)
from homeserver.events.room_versions import ROOM_VERSIONS, RoomVersion
from tests.spec_vectors import SPEC_KEY, spec_message_event, spec_minimal_event

ALL = [ROOM_VERSIONS[str(n)] for n in range(1, 13)]
EVERY_VERSION = pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")

# --- unpadded base64 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (b"", ""),
        (b"f", "Zg"),
        (b"fo", "Zm8"),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg"),
        (b"fooba", "Zm9vYmE"),
        (b"foobar", "Zm9vYmFy"),
    ],
)
def test_unpadded_base64_examples(raw: bytes, encoded: str) -> None:
    assert encode_base64(raw) == encoded
    assert decode_base64(encoded) == raw
    # "implementations SHOULD accept input with or without padding"
    assert decode_base64(encoded + "=" * (-len(encoded) % 4)) == raw


def test_url_safe_alphabet_swaps_62_and_63() -> None:
    raw = bytes([0xFB, 0xFF, 0xBF])  # 111110 111111 111110 111111: values 62, 63, 62, 63
    assert encode_base64(raw) == "+/+/"
    assert encode_base64(raw, urlsafe=True) == "-_-_"


# --- canonical JSON --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("{}", "{}"),
        ('{\n    "one": 1,\n    "two": "Two"\n}', '{"one":1,"two":"Two"}'),
        ('{\n    "b": "2",\n    "a": "1"\n}', '{"a":"1","b":"2"}'),
        ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
        (
            """{"auth": {"success": true, "mxid": "@john.doe:example.com",
                "profile": {"display_name": "John Doe", "three_pids": [
                    {"medium": "email", "address": "john.doe@example.org"},
                    {"medium": "msisdn", "address": "123456789"}]}}}""",
            '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
            '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
            '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
        ),
        ('{"a": "日本語"}', '{"a":"日本語"}'),
        ('{"本": 2, "日": 1}', '{"日":1,"本":2}'),
        ('{"a": "\\u65E5"}', '{"a":"日"}'),
        ('{"a": null}', '{"a":null}'),
    ],
)
def test_canonical_json_examples(given: str, canonical: str) -> None:
    assert canonical_json(json.loads(given)) == canonical.encode()


def test_canonical_json_example_of_numbers() -> None:
    # The spec's `{"a": -0, "b": 1e10}`: the values are the integers 0 and 10000000000 (a JSON
    # parser gives -0 as 0 and 1e10 as a float, which canonical JSON does not encode).
    assert canonical_json({"a": -0, "b": 10**10}) == b'{"a":0,"b":10000000000}'


# --- JSON signing ----------------------------------------------------------------------------


def _sign_json(obj: JsonDict) -> JsonDict:
    """The appendices' `sign_json`, written out: sign all but `signatures` and `unsigned`."""
    signed = copy.deepcopy(obj)
    signatures = signed.pop("signatures", {})
    unsigned = signed.pop("unsigned", None)
    signature = SPEC_KEY.sign(canonical_json(signed)).signature
    signatures.setdefault("domain", {})["ed25519:1"] = encode_base64(signature)
    signed["signatures"] = signatures
    if unsigned is not None:
        signed["unsigned"] = unsigned
    return signed


@pytest.mark.parametrize(
    ("obj", "signature"),
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
def test_json_signing_vectors(obj: JsonDict, signature: str) -> None:
    signed = _sign_json(obj)
    assert signed == {**obj, "signatures": {"domain": {"ed25519:1": signature}}}
    # What is added under `unsigned` or by other signers is not covered.
    resigned = _sign_json({**obj, "unsigned": {"age_ts": 1}, "signatures": {"other": {}}})
    assert resigned["signatures"]["domain"]["ed25519:1"] == signature
    get_verify_key(SPEC_KEY).verify(canonical_json(obj), decode_base64(signature))


# --- event signing ---------------------------------------------------------------------------


MINIMAL_SIGNED = {
    "auth_events": [],
    "content": {},
    "depth": 3,
    "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
    "origin": "domain",
    "origin_server_ts": 1000000,
    "prev_events": [],
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOo"
            "MszkwsQma+lYAg"
        }
    },
    "type": "X",
    "unsigned": {"age_ts": 1000000},
}
REDACTABLE_SIGNED = {
    "content": {"body": "Here is the message content"},
    "event_id": "$0:domain",
    "hashes": {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMG"
            "CA5McEiVPdhzBA"
        }
    },
    "unsigned": {"age_ts": 1000000},
}
VECTORS = pytest.mark.parametrize(
    ("make", "expected"),
    [(spec_minimal_event, MINIMAL_SIGNED), (spec_message_event, REDACTABLE_SIGNED)],
    ids=["minimal", "redactable"],
)


def _hand_redacted(event: JsonDict, version: RoomVersion) -> JsonDict:
    """The redacted form of the two vectors (neither has content keys any rule keeps), from
    the lists of rooms/fragments/v1-redactions.md (v1-v10) and v11-redactions.md (v11+)."""
    top = {
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
    if int(version.identifier) >= 11:
        top -= {"origin", "membership", "prev_state"}
    kept = {k: v for k, v in event.items() if k in top}
    kept["content"] = {}
    return kept


@EVERY_VERSION
@VECTORS
def test_event_signing_vectors(version: RoomVersion, make: Any, expected: JsonDict) -> None:
    event = make()
    hash_and_sign_event(event, "domain", SPEC_KEY, version)
    # The content hash covers everything but unsigned, signatures and hashes: one per vector,
    # whatever the room version.
    assert event["hashes"] == expected["hashes"]
    assert compute_content_hash(event) == expected["hashes"]["sha256"]
    signed_form = _hand_redacted(event, version)
    del signed_form["signatures"]
    if int(version.identifier) <= 10:
        # The spec's vectors were made with the rules of v1-v10, which keep `origin`.
        assert event == expected
    else:
        # v11 stops protecting `origin`: the signature is over the form without it.
        assert "origin" not in signed_form
        assert (
            event["signatures"]["domain"]["ed25519:1"]
            != (expected["signatures"]["domain"]["ed25519:1"])
        )
    signature = SPEC_KEY.sign(canonical_json(signed_form)).signature
    assert event["signatures"] == {"domain": {"ed25519:1": encode_base64(signature)}}
    verify_key = get_verify_key(SPEC_KEY)
    assert verify_event_signature(event, "domain", verify_key, version)
    # The signature covers the redacted form: it holds after a redaction, not after a change
    # to a protected key.
    assert verify_event_signature(redact(event, version), "domain", verify_key, version)
    tampered = {**event, "origin_server_ts": 1000001}
    assert not verify_event_signature(tampered, "domain", verify_key, version)


@EVERY_VERSION
@VECTORS
def test_reference_hash_and_event_id_vectors(
    version: RoomVersion, make: Any, expected: JsonDict
) -> None:
    event = copy.deepcopy(expected)
    if int(version.identifier) >= 11:
        hash_and_sign_event(event, "domain", SPEC_KEY, version)  # re-signed without `origin`
    hashed = _hand_redacted(event, version)
    del hashed["signatures"]
    reference = hashlib.sha256(canonical_json(hashed)).digest()
    assert compute_reference_hash(event, version) == reference
    # The hash is of the redacted form: redacting first does not change it.
    assert compute_reference_hash(redact(event, version), version) == reference
    n = int(version.identifier)
    if n <= 2:
        # rooms/fragments/v1-event-ids.md: the ID is the event's own `$opaque:domain`.
        if "event_id" in event:
            assert event_id_of(event, version) == event["event_id"] == "$0:domain"
        else:  # the minimal vector has none: not an event of these versions
            with pytest.raises(ValueError):
                event_id_of(event, version)
        with pytest.raises(ValueError):
            compute_event_id(event, version)
        return
    standard = base64.b64encode(reference).decode().rstrip("=")
    urlsafe = base64.urlsafe_b64encode(reference).decode().rstrip("=")
    assert compute_event_id(event, version) == "$" + (standard if n == 3 else urlsafe)
    assert event_id_of(event, version) == compute_event_id(event, version)


def test_v3_and_v4_event_ids_differ_only_in_the_alphabet() -> None:
    # rooms/v3.md "Event IDs" (standard) and fragments/v4-event-ids.md (URL-safe), on an event
    # whose reference hash has both `+` or `/` characters somewhere.
    event = copy.deepcopy(MINIMAL_SIGNED)
    while True:
        standard = compute_event_id(event, ROOM_VERSIONS["3"])
        if "+" in standard and "/" in standard:
            break
        event["depth"] += 1
    assert compute_event_id(event, ROOM_VERSIONS["4"]) == standard.replace("+", "-").replace(
        "/", "_"
    )
    for n in range(5, 12):
        # v5 to v11 redact this event alike before v11 and after: the same alphabet.
        assert compute_event_id(event, ROOM_VERSIONS[str(n)]).startswith("$")


def test_v12_room_id_is_the_create_event_reference_hash() -> None:
    # rooms/v12.md: the create event has no room_id; the room ID is `!` and its reference hash
    # in URL-safe base64, as its event ID is `$` and the same.
    version = ROOM_VERSIONS["12"]
    create: JsonDict = {
        "type": "m.room.create",
        "state_key": "",
        "sender": "@a:domain",
        "content": {"room_version": "12", "additional_creators": ["@b:domain"]},
        "origin_server_ts": 1000000,
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
    }
    hash_and_sign_event(create, "domain", SPEC_KEY, version)
    hashed = {k: v for k, v in create.items() if k != "signatures"}  # create keeps all content
    reference = hashlib.sha256(canonical_json(hashed)).digest()
    urlsafe = base64.urlsafe_b64encode(reference).decode().rstrip("=")
    assert compute_room_id_v12(create, version) == "!" + urlsafe
    assert compute_event_id(create, version) == "$" + urlsafe
    for n in range(1, 12):
        with pytest.raises(ValueError):
            compute_room_id_v12(create, ROOM_VERSIONS[str(n)])


# --- redaction: the spec's lists, per version ------------------------------------------------

_FULL_CONTENT: dict[str, JsonDict] = {
    "m.room.member": {
        "membership": "join",
        "join_authorised_via_users_server": "@x:domain",
        "third_party_invite": {"display_name": "x", "signed": {"mxid": "@u:domain", "token": "t"}},
        "displayname": "U",
    },
    "m.room.create": {"creator": "@u:domain", "room_version": "1", "m.federate": False},
    "m.room.join_rules": {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
    "m.room.power_levels": {
        "ban": 50,
        "events": {"m.room.name": 50},
        "events_default": 0,
        "invite": 0,
        "kick": 50,
        "redact": 50,
        "state_default": 50,
        "users": {"@u:domain": 100},
        "users_default": 0,
        "notifications": {"room": 50},
    },
    "m.room.aliases": {"aliases": ["#a:domain"]},
    "m.room.history_visibility": {"history_visibility": "shared", "other": 1},
    "m.room.redaction": {"redacts": "$x:domain", "reason": "spam"},
    "m.room.message": {"body": "hello", "msgtype": "m.text"},
}
_PL_KEYS = ["ban", "events", "events_default", "kick", "redact", "state_default", "users"]
_PL_KEYS += ["users_default"]
# Each redaction fragment's "allows key ..." list, transcribed.
_V1_KEEPS: dict[str, list[str]] = {
    "m.room.member": ["membership"],
    "m.room.create": ["creator"],
    "m.room.join_rules": ["join_rule"],
    "m.room.power_levels": _PL_KEYS,
    "m.room.aliases": ["aliases"],
    "m.room.history_visibility": ["history_visibility"],
}
_V6_KEEPS = {k: v for k, v in _V1_KEEPS.items() if k != "m.room.aliases"}
_V8_KEEPS = {**_V6_KEEPS, "m.room.join_rules": ["join_rule", "allow"]}
_V9_KEEPS = {**_V8_KEEPS, "m.room.member": ["membership", "join_authorised_via_users_server"]}
_V11_KEEPS = {
    **_V9_KEEPS,
    "m.room.create": list(_FULL_CONTENT["m.room.create"]),
    "m.room.power_levels": [*_PL_KEYS, "invite"],
    "m.room.redaction": ["redacts"],
}


def _keeps(version: RoomVersion) -> dict[str, list[str]]:
    n = int(version.identifier)
    if n <= 5:
        return _V1_KEEPS
    if n <= 7:
        return _V6_KEEPS
    if n == 8:
        return _V8_KEEPS
    if n <= 10:
        return _V9_KEEPS
    return _V11_KEEPS


@EVERY_VERSION
@pytest.mark.parametrize("event_type", sorted(_FULL_CONTENT))
def test_redaction_keeps_the_listed_content_keys(version: RoomVersion, event_type: str) -> None:
    content = _FULL_CONTENT[event_type]
    event = {
        **copy.deepcopy(MINIMAL_SIGNED),
        "type": event_type,
        "state_key": "",
        "content": content,
        "membership": "join",
        "prev_state": [],
        "redacts": "$x:domain",
        "unsigned": {"age_ts": 1},
    }
    redacted = redact(event, version)
    expected = {k: content[k] for k in _keeps(version).get(event_type, []) if k in content}
    if event_type == "m.room.member" and int(version.identifier) >= 11:
        # v11: "it allows the `signed` key of the `third_party_invite` key".
        expected["third_party_invite"] = {"signed": content["third_party_invite"]["signed"]}
    assert redacted["content"] == expected
    top = set(event) - {"unsigned", "redacts"}  # never kept: a top-level `redacts` neither
    if int(version.identifier) >= 11:
        top -= {"origin", "membership", "prev_state"}
    assert set(redacted) == top
