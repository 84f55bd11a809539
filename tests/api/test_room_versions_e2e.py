"""Every stable room version, 1 to 12, through the Client-Server API (issue 17).

One room per version, on both databases: created in that version, a second and third user
join, messages, a topic and power levels, redactions (by /redact and by sending an
m.room.redaction), a kick, a ban, a leave and an upgrade to the next version (12 to 1). Then
the stored PDUs are checked as another server would check them: each validates with
`validate_received_pdu` against our signing key, its ID is the version's (its own `$id:server`
in v1-v2, the reference hash from v3), its prev and auth events are in the version's format,
and the room's auth chains pass the auth rules.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from signedjson.key import get_verify_key
from unpaddedbase64 import encode_base64

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.types import JsonDict
from homeserver.events.format import (
    auth_event_ids,
    compute_event_id,
    compute_reference_hash,
    compute_room_id_v12,
    event_id_of,
    hash_and_sign_event,
    prev_event_ids,
    redact,
)
from homeserver.events.room_versions import ROOM_VERSIONS, RoomVersion
from homeserver.events.validation import ServerKey, auth_chain_rejections, validate_received_pdu
from homeserver.storage.events import NewEvent
from tests.helpers import auth_header, checked, register

V3 = "/_matrix/client/v3"
VERSIONS = [str(n) for n in range(1, 13)]
_STANDARD_ID = re.compile(r"\$[A-Za-z0-9+/]{43}")
_URLSAFE_ID = re.compile(r"\$[A-Za-z0-9_-]{43}")


class Users:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.ids: dict[str, str] = {}
        self.tokens: dict[str, str] = {}

    async def add(self, name: str) -> None:
        self.ids[name], self.tokens[name] = await register(self.client, name)

    async def call(
        self, name: str, method: str, path: str, body: Any = None, status: int = 200
    ) -> Any:
        r = await self.client.request(
            method,
            f"{V3}{path}",
            headers=auth_header(self.tokens[name]),
            json=body if method != "GET" else None,
        )
        return checked(r, status)

    async def send(self, name: str, room: str, txn: str, content: JsonDict, kind: str) -> str:
        body = await self.call(name, "PUT", f"/rooms/{room}/send/{kind}/{txn}", content)
        return str(body["event_id"])

    async def state(self, name: str, room: str, kind: str, content: JsonDict) -> str:
        body = await self.call(name, "PUT", f"/rooms/{room}/state/{kind}/", content)
        return str(body["event_id"])

    async def event(self, name: str, room: str, event_id: str) -> JsonDict:
        body: JsonDict = await self.call(
            name, "GET", f"/rooms/{room}/event/{quote(event_id, safe='')}"
        )
        return body


def _check_room_id(room_id: str, version: RoomVersion) -> None:
    if version.room_id_is_create_event_hash:
        assert re.fullmatch(r"![A-Za-z0-9_-]{43}", room_id), room_id
    else:
        assert re.fullmatch(r"![^:]+:test", room_id), room_id


def _check_stored(hs: Homeserver, version: RoomVersion, events: dict[str, JsonDict]) -> None:
    """What another server would check of our PDUs, all of them."""
    verify_key = get_verify_key(hs.signing_key)
    key_id = f"{verify_key.alg}:{verify_key.version}"

    def keys(server: str, wanted: str) -> ServerKey | None:
        return ServerKey(verify_key) if (server, wanted) == ("test", key_id) else None

    for event_id, pdu in events.items():
        assert validate_received_pdu(pdu, version, keys) is pdu  # the content hash matches
        assert event_id_of(pdu, version) == event_id
        refs = [*prev_event_ids(pdu, version), *auth_event_ids(pdu, version)]
        assert all(r in events for r in refs), "every reference is to an event of the room"
        if version.event_id_in_event:
            # rooms/fragments/v1-event-ids.md: our own `$opaque:server`, and [ID, hashes]
            # pairs whose hash is the referenced event's reference hash.
            assert pdu["event_id"].endswith(":test")
            with pytest.raises(ValueError):
                compute_event_id(pdu, version)
            for key in ("prev_events", "auth_events"):
                for ref_id, hashes in pdu[key]:
                    reference = compute_reference_hash(events[ref_id], version)
                    assert hashes == {"sha256": encode_base64(reference)}
        else:
            assert "event_id" not in pdu
            assert compute_event_id(pdu, version) == event_id
            shape = _STANDARD_ID if version.identifier == "3" else _URLSAFE_ID
            assert shape.fullmatch(event_id), event_id
            assert all(isinstance(r, str) for r in pdu["prev_events"] + pdu["auth_events"])
        if pdu["type"] == "m.room.create":
            assert ("creator" in pdu["content"]) is version.creator_in_content
            if version.room_id_is_create_event_hash:
                assert "room_id" not in pdu
        elif version.room_id_is_create_event_hash:
            create_id = "$" + pdu["room_id"][1:]
            assert create_id in events and create_id not in pdu["auth_events"]
        if pdu["type"] == "m.room.redaction":
            target_key = pdu["content"] if version.redacts_in_content else pdu
            assert target_key["redacts"] in events
    assert auth_chain_rejections(events, version) == {}


async def _sync_timeline(users: Users, name: str, room: str) -> dict[str, JsonDict]:
    room_filter = json.dumps({"room": {"timeline": {"limit": 200}}})
    r = await users.client.get(
        f"{V3}/sync", params={"filter": room_filter}, headers=auth_header(users.tokens[name])
    )
    body = checked(r)
    timeline = body["rooms"]["join"][room]["timeline"]["events"]
    return {e["event_id"]: e for e in timeline}


@pytest.mark.parametrize("version_id", VERSIONS)
async def test_room_version_end_to_end(
    hs: Homeserver, client: httpx.AsyncClient, version_id: str
) -> None:
    version = ROOM_VERSIONS[version_id]
    users = Users(client)
    for name in ("alice", "bob", "carol"):
        await users.add(name)
    alice, bob, carol = (users.ids[n] for n in ("alice", "bob", "carol"))

    caps = await users.call("alice", "GET", "/capabilities")
    assert caps["capabilities"]["m.room_versions"]["available"][version_id] == "stable"

    body = {"room_version": version_id, "preset": "public_chat", "name": f"v{version_id}"}
    room = str((await users.call("alice", "POST", "/createRoom", body))["room_id"])
    _check_room_id(room, version)
    create = await users.call("alice", "GET", f"/rooms/{room}/state/m.room.create/")
    assert create["room_version"] == version_id
    assert (create.get("creator") == alice) is version.creator_in_content

    await users.call("alice", "POST", f"/rooms/{room}/invite", {"user_id": bob})
    await users.call("bob", "POST", f"/join/{room}", {})
    await users.call("carol", "POST", f"/join/{room}", {})

    hello = await users.send(
        "alice", room, "m1", {"msgtype": "m.text", "body": "hi"}, "m.room.message"
    )
    from_bob = await users.send(
        "bob", room, "m2", {"msgtype": "m.text", "body": "yo"}, "m.room.message"
    )
    own = await users.send(
        "bob", room, "m3", {"msgtype": "m.text", "body": "oops"}, "m.room.message"
    )
    await users.state("alice", room, "m.room.topic", {"topic": f"version {version_id}"})
    pl = await users.call("alice", "GET", f"/rooms/{room}/state/m.room.power_levels/")
    pl["users"][bob] = 50
    pl_id = await users.state("alice", room, "m.room.power_levels", pl)
    # bob now moderates: he may set the topic (50), carol (0) may not.
    await users.state("bob", room, "m.room.topic", {"topic": "by bob"})
    r = await client.put(
        f"{V3}/rooms/{room}/state/m.room.topic/",
        json={"topic": "by carol"},
        headers=auth_header(users.tokens["carol"]),
    )
    checked(r, 403, "M_FORBIDDEN")

    # Redactions: by /redact, and by sending m.room.redaction with `redacts` in content.
    redaction = (
        await users.call("alice", "PUT", f"/rooms/{room}/redact/{quote(from_bob, safe='')}/r1", {})
    )["event_id"]
    by_send = await users.send("bob", room, "r2", {"redacts": own}, "m.room.redaction")
    # carol may neither redact others' events through /send nor through /redact.
    r = await client.put(
        f"{V3}/rooms/{room}/send/m.room.redaction/r3",
        json={"redacts": hello},
        headers=auth_header(users.tokens["carol"]),
    )
    checked(r, 403, "M_FORBIDDEN", documented=False)  # as /redact answers
    bad_redactions: list[tuple[JsonDict, int, str]] = [
        ({"reason": "no target"}, 400, "M_BAD_JSON"),
        ({"redacts": 5}, 400, "M_BAD_JSON"),
        ({"redacts": "not an ID"}, 400, "M_INVALID_PARAM"),
        ({"redacts": "$unknown:test"}, 404, "M_NOT_FOUND"),
    ]
    for i, (content, status, errcode) in enumerate(bad_redactions):
        r = await client.put(
            f"{V3}/rooms/{room}/send/m.room.redaction/bad{i}",
            json=content,
            headers=auth_header(users.tokens["alice"]),
        )
        checked(r, status, errcode, documented=status == 400)
    pl_redaction = (
        await users.call("alice", "PUT", f"/rooms/{room}/redact/{quote(pl_id, safe='')}/r5", {})
    )["event_id"]
    for served_redaction, target in ((redaction, from_bob), (by_send, own)):
        served = await users.event("alice", room, served_redaction)
        # Servers serve `redacts` at the top level and in content, whatever the version.
        assert served["redacts"] == served["content"]["redacts"] == target
        redacted = await users.event("alice", room, target)
        assert redacted["content"] == {}
        assert redacted["unsigned"]["redacted_because"]["event_id"] == served_redaction
    # The power levels keep what the version's algorithm keeps: `invite` from v11 only.
    served_pl = await users.event("alice", room, pl_id)
    assert ("invite" in served_pl["content"]) is (int(version_id) >= 11)
    assert "notifications" not in served_pl["content"]
    assert served_pl["content"]["users"][bob] == 50
    stored_pl = (await hs.event_store.get_events([pl_id]))[pl_id].pdu
    assert served_pl["content"] == redact(stored_pl, version)["content"]
    timeline = await _sync_timeline(users, "bob", room)
    assert timeline[pl_id]["content"] == served_pl["content"]
    assert timeline[from_bob]["content"] == {}
    assert timeline[pl_redaction]["redacts"] == pl_id

    # Knocking exists from v7 (rooms/v7.md): before, the auth rules know no such membership.
    jr = await users.state("alice", room, "m.room.join_rules", {"join_rule": "knock"})
    await users.add("dave")
    r = await client.post(f"{V3}/knock/{room}", json={}, headers=auth_header(users.tokens["dave"]))
    if version.knock_join_rule:
        checked(r)
    else:
        checked(r, 403, "M_FORBIDDEN")
    assert jr in {e for e in (await _sync_timeline(users, "alice", room))}
    await users.state("alice", room, "m.room.join_rules", {"join_rule": "public"})

    # Kick, rejoin, ban, leave.
    await users.call("bob", "POST", f"/rooms/{room}/kick", {"user_id": carol, "reason": "x"})
    await users.call("carol", "POST", f"/join/{room}", {})
    await users.call("bob", "POST", f"/rooms/{room}/ban", {"user_id": carol})
    r = await client.post(f"{V3}/join/{room}", json={}, headers=auth_header(users.tokens["carol"]))
    checked(r, 403, "M_FORBIDDEN")
    await users.call("bob", "POST", f"/rooms/{room}/leave", {})
    members = await users.call("alice", "GET", f"/rooms/{room}/joined_members")
    assert set(members["joined"]) == {alice}

    # Upgrade to the next version (and v12 back to v1).
    target = ROOM_VERSIONS[str(int(version_id) % 12 + 1)]
    body = {"new_version": target.identifier}
    new_room = str(
        (await users.call("alice", "POST", f"/rooms/{room}/upgrade", body))["replacement_room"]
    )
    _check_room_id(new_room, target)
    tombstone = await users.call("alice", "GET", f"/rooms/{room}/state/m.room.tombstone/")
    assert tombstone["replacement_room"] == new_room
    new_create = await users.call("alice", "GET", f"/rooms/{new_room}/state/m.room.create/")
    assert new_create["room_version"] == target.identifier
    assert new_create["predecessor"]["room_id"] == room
    topic = await users.call("alice", "GET", f"/rooms/{new_room}/state/m.room.topic/")
    assert topic["topic"] == "by bob"
    await users.send(
        "alice", new_room, "n1", {"msgtype": "m.text", "body": "moved"}, "m.room.message"
    )
    await users.state("alice", new_room, "m.room.name", {"name": "new"})

    for room_id, room_version in ((room, version), (new_room, target)):
        stored = await hs.event_store.get_room_events(room_id, limit=1000, descending=False)
        assert len(stored) >= 10
        _check_stored(hs, room_version, {e.event_id: e.pdu for e in stored})
    if version.room_id_is_create_event_hash:
        stored_create = await hs.event_store.get_room_events(room, limit=1, descending=False)
        assert compute_room_id_v12(stored_create[0].pdu, version) == room


@pytest.mark.parametrize("version_id", ["13", "0", "01", " 12", "org.example.x", "1.0", ""])
async def test_unsupported_room_versions_are_refused(
    client: httpx.AsyncClient, version_id: str
) -> None:
    _, token = await register(client, "alice")
    r = await client.post(
        f"{V3}/createRoom", json={"room_version": version_id}, headers=auth_header(token)
    )
    checked(r, 400, "M_UNSUPPORTED_ROOM_VERSION")
    room = str(
        checked(await client.post(f"{V3}/createRoom", json={}, headers=auth_header(token)))[
            "room_id"
        ]
    )
    r = await client.post(
        f"{V3}/rooms/{room}/upgrade", json={"new_version": version_id}, headers=auth_header(token)
    )
    checked(r, 400, "M_UNSUPPORTED_ROOM_VERSION")
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(token))
    assert checked(r)["joined_rooms"] == [room]


async def test_v3_event_ids_with_a_slash_are_served(client: httpx.AsyncClient) -> None:
    """Room version 3 IDs are standard base64: `/` is sent as `%2F` and must still route."""
    users = Users(client)
    await users.add("alice")
    body = {"room_version": "3", "preset": "public_chat"}
    room = str((await users.call("alice", "POST", "/createRoom", body))["room_id"])
    for n in range(200):
        content = {"msgtype": "m.text", "body": str(n)}
        event_id = await users.send("alice", room, f"t{n}", content, "m.room.message")
        if "/" in event_id:
            break
    else:
        pytest.fail("no ID with a slash in 200 events")
    encoded = quote(event_id, safe="")
    assert "%2F" in encoded
    assert (await users.event("alice", room, event_id))["content"]["body"] == str(n)
    context = await users.call("alice", "GET", f"/rooms/{room}/context/{encoded}")
    assert context["event"]["event_id"] == event_id
    await users.call("alice", "POST", f"/rooms/{room}/receipt/m.read/{encoded}", {})
    await users.call("alice", "PUT", f"/rooms/{room}/redact/{encoded}/x", {})
    assert (await users.event("alice", room, event_id))["content"] == {}
    # A slash that is not encoded still separates segments.
    r = await client.get(
        f"{V3}/rooms/{room}/event/{event_id}", headers=auth_header(users.tokens["alice"])
    )
    assert r.status_code == 404


async def _fork_topic(
    hs: Homeserver, version: RoomVersion, room_id: str, parent_id: str, ts: int, depth: int
) -> str:
    """A topic on ``parent_id`` beside the room's line, built, hashed and signed in the
    version's format as another of our workers would have (persisted as it is)."""
    parent = await hs.event_store.get_event(parent_id)
    room = await hs.room_store.get_room(room_id)
    assert parent is not None and room is not None
    state = await hs.event_store.get_state_ids(parent.state_group)
    keys = [("m.room.power_levels", ""), ("m.room.member", parent.sender)]
    if version.create_event_in_auth_events:
        keys.insert(0, ("m.room.create", ""))
    auth_ids = [state[k] for k in keys]
    loaded = await hs.event_store.get_events([parent_id, *auth_ids])

    def refs(ids: list[str]) -> list[Any]:
        if not version.event_id_in_event:
            return ids
        return [
            [i, {"sha256": encode_base64(compute_reference_hash(loaded[i].pdu, version))}]
            for i in ids
        ]

    pdu: JsonDict = {
        "room_id": room_id,
        "type": "m.room.topic",
        "state_key": "",
        "sender": parent.sender,
        "content": {"topic": "on the fork"},
        "depth": parent.depth + depth,
        "origin_server_ts": ts,
        "prev_events": refs([parent_id]),
        "auth_events": refs(auth_ids),
    }
    if version.event_id_in_event:
        pdu["event_id"] = "$fork:test"
    hash_and_sign_event(pdu, "test", hs.signing_key, version)
    event_id = event_id_of(pdu, version)
    position = await hs.event_store.persist_event(
        NewEvent(pdu, event_id, room_id, {}), room.latest_event_id
    )
    assert position is not None
    return event_id


@pytest.mark.parametrize("deeper_fork", [False, True])
@pytest.mark.parametrize("version_id", VERSIONS)
async def test_a_fork_is_merged_in_the_version_format_and_resolved_by_its_algorithm(
    hs: Homeserver, client: httpx.AsyncClient, clock: FakeClock, version_id: str, deeper_fork: bool
) -> None:
    """A topic war across a fork, one sender: state resolution v2 and v2.1 let the later
    topic win, v1 (room version 1) the deeper one. The fork's topic is either later and
    shallower than the line's, or earlier and deeper. The merging event lists both
    extremities in the version's format."""
    version = ROOM_VERSIONS[version_id]
    users = Users(client)
    await users.add("alice")
    body = {"room_version": version_id, "preset": "public_chat"}
    room = str((await users.call("alice", "POST", "/createRoom", body))["room_id"])
    first = await users.send("alice", room, "t1", {"body": "1"}, "m.room.message")
    [parent] = await hs.event_store.get_prev_event_ids(first)
    clock.advance(10_000)
    line_topic = await users.state("alice", room, "m.room.topic", {"topic": "on the line"})
    line = await hs.event_store.get_event(line_topic)
    assert line is not None
    if deeper_fork:
        fork_topic = await _fork_topic(hs, version, room, parent, line.origin_server_ts - 5, 10)
    else:
        fork_topic = await _fork_topic(hs, version, room, parent, line.origin_server_ts + 1, 1)
    merged = await users.send("alice", room, "t2", {"body": "2"}, "m.room.message")
    event = await hs.event_store.get_event(merged)
    assert event is not None
    assert sorted(prev_event_ids(event.pdu, version)) == sorted([line_topic, fork_topic])
    topic = await users.call("alice", "GET", f"/rooms/{room}/state/m.room.topic/")
    fork_wins = deeper_fork if version_id == "1" else not deeper_fork
    assert topic["topic"] == ("on the fork" if fork_wins else "on the line")
    stored = await hs.event_store.get_room_events(room, limit=1000, descending=False)
    _check_stored(hs, version, {e.event_id: e.pdu for e in stored})


async def test_capabilities_list_every_stable_version(client: httpx.AsyncClient) -> None:
    users = Users(client)
    await users.add("alice")
    caps = (await users.call("alice", "GET", "/capabilities"))["capabilities"]
    assert caps["m.room_versions"] == {
        "default": "12",
        "available": {v: "stable" for v in VERSIONS},
    }


async def test_upgrade_from_v1_turns_stringy_power_levels_into_integers(
    client: httpx.AsyncClient,
) -> None:
    """v1-v9 accept levels written as strings; v10+ refuse them, so the copy is rewritten."""
    users = Users(client)
    for name in ("alice", "bob"):
        await users.add(name)
    alice, bob = users.ids["alice"], users.ids["bob"]
    body = {"room_version": "1", "preset": "public_chat"}
    room = str((await users.call("alice", "POST", "/createRoom", body))["room_id"])
    await users.call("bob", "POST", f"/join/{room}", {})
    pl = await users.call("alice", "GET", f"/rooms/{room}/state/m.room.power_levels/")
    pl["users"][bob] = " +60 "
    pl["ban"] = "70"
    pl["events"]["m.room.topic"] = "55"
    await users.state("alice", room, "m.room.power_levels", pl)
    # In v1 the strings count: bob (60) may set the topic (55) but not ban (70).
    await users.state("bob", room, "m.room.topic", {"topic": "bob's"})
    for new_version in ("12", "10"):
        upgrade = {"new_version": new_version}
        new_room = (await users.call("alice", "POST", f"/rooms/{room}/upgrade", upgrade))[
            "replacement_room"
        ]
        new_pl = await users.call("alice", "GET", f"/rooms/{new_room}/state/m.room.power_levels/")
        assert new_pl["users"][bob] == 60
        assert new_pl["ban"] == 70 and new_pl["events"]["m.room.topic"] == 55
        # v12: the upgrader is the creator, never listed; v10: listed with their level.
        assert (alice in new_pl["users"]) is (new_version == "10")
        await users.call("bob", "POST", f"/join/{new_room}", {})
        await users.state("bob", new_room, "m.room.topic", {"topic": "bob's again"})
        room = new_room


async def test_downgrade_from_v12_keeps_the_creators_on_top(client: httpx.AsyncClient) -> None:
    """Creators of a v12 room have no entry in its power levels; in an older version they
    need one, as high as anything the levels name (the tombstone's 150)."""
    users = Users(client)
    for name in ("alice", "bob"):
        await users.add(name)
    alice, bob = users.ids["alice"], users.ids["bob"]
    body = {"preset": "trusted_private_chat", "invite": [bob]}
    room = str((await users.call("alice", "POST", "/createRoom", body))["room_id"])
    create = await users.call("alice", "GET", f"/rooms/{room}/state/m.room.create/")
    assert create["additional_creators"] == [bob]
    await users.call("bob", "POST", f"/join/{room}", {})
    new_room = (await users.call("bob", "POST", f"/rooms/{room}/upgrade", {"new_version": "5"}))[
        "replacement_room"
    ]
    new_create = await users.call("bob", "GET", f"/rooms/{new_room}/state/m.room.create/")
    assert new_create["creator"] == bob and "additional_creators" not in new_create
    pl = await users.call("bob", "GET", f"/rooms/{new_room}/state/m.room.power_levels/")
    assert pl["users"] == {alice: 150, bob: 150}
    # And back to v12 by bob, with alice as an additional creator again.
    body = {"new_version": "12", "additional_creators": [alice]}
    again = (await users.call("bob", "POST", f"/rooms/{new_room}/upgrade", body))[
        "replacement_room"
    ]
    create = await users.call("bob", "GET", f"/rooms/{again}/state/m.room.create/")
    assert create["additional_creators"] == [alice]
    pl = await users.call("bob", "GET", f"/rooms/{again}/state/m.room.power_levels/")
    assert pl["users"] == {}


async def test_encoded_slashes_and_percent_signs_reach_the_parameters(
    client: httpx.AsyncClient,
) -> None:
    """`%2F` is a `/` inside its segment, `%252F` the text `%2F`, with or without the other."""
    users = Users(client)
    await users.add("alice")
    room = str((await users.call("alice", "POST", "/createRoom", {}))["room_id"])
    for raw, state_key in (("a%2Fb%252F", "a/b%2F"), ("c%252F", "c%2F"), ("d%2f", "d/")):
        await users.call("alice", "PUT", f"/rooms/{room}/state/org.example.k/{raw}", {"k": raw})
        state = await users.call("alice", "GET", f"/rooms/{room}/state")
        found = [e for e in state if e["type"] == "org.example.k" and e["content"]["k"] == raw]
        assert [e["state_key"] for e in found] == [state_key]
    r = await client.get(
        f"{V3}/rooms/{room}/event/%24x%2Fy", headers=auth_header(users.tokens["alice"])
    )
    checked(r, 404, "M_NOT_FOUND")


@pytest.mark.parametrize("version_id", ["9", "10"])
async def test_string_power_levels_at_create_follow_the_version(
    client: httpx.AsyncClient, version_id: str
) -> None:
    """Before v10 a level may be a string ("60"); from v10 the auth rules refuse it, and
    createRoom refuses the room whole (400 M_INVALID_ROOM_STATE), leaving nothing behind."""
    users = Users(client)
    await users.add("alice")
    body = {"room_version": version_id, "power_level_content_override": {"ban": "60"}}
    r = await client.post(f"{V3}/createRoom", json=body, headers=auth_header(users.tokens["alice"]))
    if version_id == "9":
        room = checked(r)["room_id"]
        pl = await users.call("alice", "GET", f"/rooms/{room}/state/m.room.power_levels/")
        assert pl["ban"] == "60"
    else:
        checked(r, 400, "M_INVALID_ROOM_STATE")
        assert (await users.call("alice", "GET", "/joined_rooms"))["joined_rooms"] == []
