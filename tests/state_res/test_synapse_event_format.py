"""Our event format against Synapse's on seeded random events of every room version, 1 to 12.

For each event both sides compute the content hash, the redacted form, the reference hash,
the event ID (v1-v2: the event's own; v3 standard base64; v4+ URL-safe), the v12 room ID of a
create event and the signature with the appendices' seed key. The events are made to hit what
differs between versions: the content each redaction algorithm keeps (m.room.create,
join_rules with `allow`, power levels with `invite`, a member's
`join_authorised_via_users_server` and `third_party_invite`, m.room.aliases, a redaction's
`redacts` at the top level and in content) and the top-level keys v11 stops protecting.
Synapse runs once, in its own virtualenv (see test_synapse_differential.py), over all events.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from signedjson.key import decode_signing_key_base64, encode_verify_key_base64, get_verify_key
from unpaddedbase64 import encode_base64

from bench.servers import SYNAPSE_VERSION
from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.events.format import (
    compute_content_hash,
    compute_reference_hash,
    compute_room_id_v12,
    event_id_of,
    redact,
    sign_event,
)
from homeserver.events.room_versions import ROOM_VERSIONS
from tests.helpers import auth_header, checked, register
from tests.state_res.test_synapse_differential import _synapse_python

HERE = Path(__file__).parent
ADAPTER = HERE / "synapse_event_adapter.py"
EVENTS_PER_VERSION = 400
V3 = "/_matrix/client/v3"
SPEC_KEY = decode_signing_key_base64("ed25519", "1", "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
SERVERS = ("domain", "b.example", "c.example")
TYPES = (
    "m.room.create",
    "m.room.member",
    "m.room.join_rules",
    "m.room.power_levels",
    "m.room.aliases",
    "m.room.history_visibility",
    "m.room.redaction",
    "m.room.message",
    "m.room.topic",
    "org.example.custom",
)
# Top-level keys some versions protect from redaction and others do not, and ones none keep.
OPTIONAL_TOP_LEVEL = ("origin", "membership", "prev_state", "redacts", "x_junk", "unsigned")


def _text(rng: random.Random) -> str:
    return "".join(rng.choice("abcXYZ09_-.é日本 \u2603") for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 6 if depth < 3 else 3)
    if kind == 0:
        return _text(rng)
    if kind == 1:
        return rng.randint(-(2**53) + 1, 2**53 - 1)
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.randint(-5, 200)
    if kind in (4, 5):
        return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _extra(rng: random.Random) -> JsonDict:
    return {f"x.{_text(rng)}": _value(rng) for _ in range(rng.randint(0, 3))}


def _user(rng: random.Random) -> str:
    return f"@{rng.choice('abcdef')}{rng.randint(0, 9)}:{rng.choice(SERVERS)}"


def _content(rng: random.Random, event_type: str, version: str) -> JsonDict:
    c: JsonDict = _extra(rng)
    if event_type == "m.room.create":
        c["room_version"] = version
        if rng.random() < 0.7:
            c["creator"] = _user(rng)
        if rng.random() < 0.5:
            c["additional_creators"] = [_user(rng) for _ in range(rng.randint(0, 2))]
        if rng.random() < 0.5:
            c["m.federate"] = rng.random() < 0.5
        if rng.random() < 0.3:
            c["predecessor"] = {"room_id": "!old:domain", "event_id": "$old:domain"}
    elif event_type == "m.room.member":
        c["membership"] = rng.choice(["join", "invite", "leave", "ban", "knock"])
        if rng.random() < 0.4:
            c["join_authorised_via_users_server"] = _user(rng)
        roll = rng.random()
        if roll < 0.2:
            c["third_party_invite"] = {"display_name": _text(rng), "signed": _extra(rng)}
        elif roll < 0.3:
            c["third_party_invite"] = {"display_name": _text(rng)}  # no `signed`
        c["displayname"] = _text(rng)
    elif event_type == "m.room.join_rules":
        c["join_rule"] = rng.choice(["public", "invite", "knock", "restricted", "knock_restricted"])
        if rng.random() < 0.6:
            c["allow"] = [{"type": "m.room_membership", "room_id": "!r:domain"}]
    elif event_type == "m.room.power_levels":
        for key in ("ban", "kick", "redact", "invite", "events_default", "state_default"):
            if rng.random() < 0.7:
                c[key] = rng.choice([0, 50, 100, "50"])
        c["users"] = {_user(rng): rng.randint(0, 100) for _ in range(rng.randint(0, 3))}
        c["users_default"] = 0
        c["events"] = {"m.room.name": 50}
        if rng.random() < 0.5:
            c["notifications"] = {"room": 50}
    elif event_type == "m.room.aliases":
        c["aliases"] = [f"#{_text(rng)}:domain"]
    elif event_type == "m.room.history_visibility":
        c["history_visibility"] = rng.choice(["shared", "joined", "invited"])
    elif event_type == "m.room.redaction":
        if rng.random() < 0.6:
            c["redacts"] = "$target:domain"
        if rng.random() < 0.5:
            c["reason"] = _text(rng)
    else:
        c["body"] = _text(rng)
    return c


def _refs(rng: random.Random, version: str, count: int) -> list[Any]:
    ids = [f"$e{rng.randint(0, 10**6)}:{rng.choice(SERVERS)}" for _ in range(count)]
    if int(version) <= 2:
        return [[i, {"sha256": encode_base64(rng.randbytes(32))}] for i in ids]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return ["$" + "".join(rng.choice(alphabet + "-_") for _ in range(43)) for _ in ids]


def random_event(rng: random.Random, version: str) -> JsonDict:
    event_type = rng.choice(TYPES)
    is_create = event_type == "m.room.create"
    event: JsonDict = {
        "type": event_type,
        "sender": _user(rng),
        "content": _content(rng, event_type, version),
        "origin_server_ts": rng.randint(0, 2**41),
        "depth": 1 if is_create else rng.randint(2, 10**6),
        "prev_events": [] if is_create else _refs(rng, version, rng.randint(1, 3)),
        "auth_events": [] if is_create else _refs(rng, version, rng.randint(1, 4)),
        "hashes": {"sha256": encode_base64(rng.randbytes(32))},
        "signatures": {"b.example": {"ed25519:k": encode_base64(rng.randbytes(64))}},
    }
    if not (is_create and version == "12"):
        event["room_id"] = f"!{rng.randint(0, 10**6)}:domain"
    if (
        is_create
        or event_type.startswith("m.room.")
        and event_type
        not in (
            "m.room.message",
            "m.room.redaction",
        )
    ):
        event["state_key"] = _user(rng) if event_type == "m.room.member" else ""
    if int(version) <= 2:
        event["event_id"] = f"$ev{rng.randint(0, 10**9)}:{rng.choice(SERVERS)}"
    for key in OPTIONAL_TOP_LEVEL:
        if rng.random() < 0.4:
            event[key] = (
                {"age": rng.randint(0, 1000), "x": _text(rng)}
                if key == "unsigned"
                else "$target:domain"
                if key == "redacts"
                else _value(rng)
            )
    return event


def _ours(item: JsonDict) -> JsonDict:
    version = ROOM_VERSIONS[item["room_version"]]
    event = json.loads(json.dumps(item["event"]))
    signed = {**event, "signatures": {}}
    sign_event(signed, "domain", SPEC_KEY, version)
    is_v12_create = version.room_id_is_create_event_hash and event["type"] == "m.room.create"
    return {
        "content_hash": compute_content_hash(event),
        "redacted": _without_unsigned(redact(event, version)),
        "signature": signed["signatures"]["domain"],
        "reference_hash": encode_base64(compute_reference_hash(event, version)),
        "event_id": event_id_of(event, version),
        "room_id": compute_room_id_v12(event, version) if is_v12_create else event["room_id"],
    }


def _without_unsigned(event: JsonDict) -> JsonDict:
    # Synapse keeps some `unsigned` keys of its own through a redaction (`age_ts` and the
    # like); the spec's algorithms drop `unsigned`, and no hash or signature covers it.
    return {k: v for k, v in event.items() if k != "unsigned"}


def _synapse(python: Path, items: list[JsonDict]) -> list[JsonDict]:
    stdin = "".join(json.dumps(item) + "\n" for item in items)
    done = subprocess.run(
        [str(python), str(ADAPTER)], input=stdin, capture_output=True, text=True, cwd=HERE
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines[0]["synapse_version"] == SYNAPSE_VERSION
    assert len(lines) == len(items) + 1
    return lines[1:]


def _items() -> list[JsonDict]:
    items = []
    for n in range(1, 13):
        rng = random.Random(17_000 + n)
        for _ in range(EVENTS_PER_VERSION):
            items.append(
                {"index": len(items), "room_version": str(n), "event": random_event(rng, str(n))}
            )
    return items


@pytest.mark.timeout(900)
def test_event_format_matches_synapse() -> None:
    items = _items()
    answers = _synapse(_synapse_python(), items)
    failures = []
    for item, theirs in zip(items, answers, strict=True):
        assert "error" not in theirs, theirs["error"][-2000:] + json.dumps(item)
        mine = _ours(item)
        theirs["redacted"] = _without_unsigned(theirs["redacted"])
        theirs["signature"] = theirs["signatures"]["domain"]
        if _without_unsigned(theirs["pruned"]) != mine["redacted"]:
            failures.append(f"prune_event differs from redact_event_dict: {item}")
        for key, value in mine.items():
            if theirs.get(key) != value:
                failures.append(
                    f"room version {item['room_version']}, {key}: ours {value!r}, Synapse "
                    f"{theirs.get(key)!r}, event {json.dumps(item['event'])}"
                )
    assert not failures, f"{len(failures)} differences:\n" + "\n".join(failures[:5])
    # The generator covers what differs between versions.
    covered = {(i["room_version"], i["event"]["type"]) for i in items}
    assert len(covered) == 12 * len(TYPES)


async def test_synapse_accepts_the_pdus_we_send_in_every_version(
    hs: Homeserver, client: httpx.AsyncClient
) -> None:
    """Rooms of every version made through the client API; Synapse parses each stored PDU as
    federation would, finds the same event ID and room ID, and checks its content hash and
    our server's signature."""
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    verify_key = get_verify_key(hs.signing_key)
    verify = {
        "server": hs.server_name,
        "key_id": f"{verify_key.alg}:{verify_key.version}",
        "key": encode_verify_key_base64(verify_key),
    }
    items: list[JsonDict] = []
    for n in range(1, 13):
        body = {"room_version": str(n), "preset": "public_chat", "name": f"v{n}"}
        r = await client.post(f"{V3}/createRoom", json=body, headers=auth_header(alice_token))
        room = checked(r)["room_id"]
        checked(await client.post(f"{V3}/join/{room}", json={}, headers=auth_header(bob_token)))
        for i, token in enumerate((alice_token, bob_token)):
            r = await client.put(
                f"{V3}/rooms/{room}/send/m.room.message/m{i}",
                json={"msgtype": "m.text", "body": f"hello {i}"},
                headers=auth_header(token),
            )
            message = checked(r)["event_id"]
        r = await client.put(
            f"{V3}/rooms/{room}/redact/{quote(message, safe='')}/r",
            json={"reason": "r"},
            headers=auth_header(alice_token),
        )
        checked(r)
        r = await client.put(
            f"{V3}/rooms/{room}/state/m.room.topic/",
            json={"topic": "t"},
            headers=auth_header(bob_token),
        )
        assert r.status_code == 403  # bob is not a moderator
        pl = {"users": {} if n == 12 else {alice: 100}, "users_default": 50}
        r = await client.put(
            f"{V3}/rooms/{room}/state/m.room.power_levels/",
            json=pl,
            headers=auth_header(alice_token),
        )
        checked(r)
        for e in await hs.event_store.get_room_events(room, limit=100, descending=False):
            items.append(
                {
                    "index": len(items),
                    "room_version": str(n),
                    "event": e.pdu,
                    "verify": verify,
                    "ours": {"event_id": e.event_id, "room_id": room},
                }
            )
    assert bob
    answers = _synapse(_synapse_python(), items)
    for item, theirs in zip(items, answers, strict=True):
        assert "error" not in theirs, theirs["error"][-2000:]
        assert theirs["event_id"] == item["ours"]["event_id"], item
        assert theirs["room_id"] == item["ours"]["room_id"], item
        assert theirs["content_hash_ok"] and theirs["signature_ok"], item
    assert {i["room_version"] for i in items} == {str(n) for n in range(1, 13)}
