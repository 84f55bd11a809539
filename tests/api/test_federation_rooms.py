"""Rooms across servers, as a remote server sees ours: make_join/send_join, make_leave/
send_leave, make_knock/send_knock, invites of our users, and the reads of our rooms (event,
state, state_ids, event_auth, backfill, get_missing_events) with server ACLs and history
visibility, through the in-process client and a fake remote server that signs."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.types import JsonDict
from homeserver.events.format import compute_event_id, hash_and_sign_event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.federation.keyring import parse_key_response
from homeserver.storage.server_keys import ServerKeyStore
from tests.federation_helpers import DAY_MS, FakeRemote
from tests.helpers import auth_header, create_room, register

FED = "/_matrix/federation"
ALL_VERSIONS = [str(n) for n in range(1, 13)]
Fed = tuple[Homeserver, httpx.AsyncClient]


def q(value: str) -> str:
    return quote(value, safe="")


async def signed(
    client: httpx.AsyncClient,
    remote: FakeRemote,
    method: str,
    path: str,
    query: dict[str, Any] | None = None,
    content: Any = None,
) -> httpx.Response:
    uri = path + ("?" + urlencode(query, doseq=True) if query else "")
    headers = {"Authorization": remote.authorization("test", method, uri, content)}
    return await client.request(method, uri, headers=headers, json=content)


def sign_template(remote: FakeRemote, template: JsonDict, version: str) -> tuple[JsonDict, str]:
    pdu = copy.deepcopy(template)
    pdu["origin"] = remote.server_name
    room_version = KNOWN_ROOM_VERSIONS[version]
    hash_and_sign_event(pdu, remote.server_name, remote.key, room_version)
    return pdu, compute_event_id(pdu, room_version)


async def make(
    client: httpx.AsyncClient, remote: FakeRemote, kind: str, room_id: str, user_id: str
) -> JsonDict:
    query = {"ver": ALL_VERSIONS} if kind in ("join", "knock") else None
    r = await signed(
        client, remote, "GET", f"{FED}/v1/make_{kind}/{q(room_id)}/{q(user_id)}", query
    )
    assert r.status_code == 200, r.text
    body: JsonDict = r.json()
    return body


async def remote_join(
    client: httpx.AsyncClient, remote: FakeRemote, room_id: str, user_id: str
) -> tuple[JsonDict, str, JsonDict]:
    """make_join then send_join: (the send_join answer, the event ID, the signed event)."""
    made = await make(client, remote, "join", room_id, user_id)
    pdu, event_id = sign_template(remote, made["event"], made["room_version"])
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/send_join/{q(room_id)}/{q(event_id)}", content=pdu
    )
    assert r.status_code == 200, r.text
    answer: JsonDict = r.json()
    return answer, event_id, pdu


async def store_keys(hs: Homeserver, remote: FakeRemote, clock: FakeClock) -> None:
    keys = parse_key_response(
        remote.key_response(clock.now_ms() + DAY_MS),
        remote.server_name,
        remote.server_name,
        clock.now_ms(),
    )
    await ServerKeyStore(hs.db).store_keys(keys)


async def sync(client: httpx.AsyncClient, token: str) -> JsonDict:
    r = await client.get("/_matrix/client/v3/sync", headers=auth_header(token))
    assert r.status_code == 200, r.text
    body: JsonDict = r.json()
    return body


@pytest.fixture
async def room(fed: Fed) -> tuple[str, str]:
    """A public room of alice's: (room ID, alice's token)."""
    _, client = fed
    _, token = await register(client, "alice")
    room_id = await create_room(client, token, preset="public_chat")
    return room_id, token


async def test_remote_user_joins_and_reads_the_room(
    fed: Fed, remote: FakeRemote, room: tuple[str, str]
) -> None:
    hs, client = fed
    room_id, token = room
    made = await make(client, remote, "join", room_id, "@bob:remote.test")
    template = made["event"]
    assert made["room_version"] == "12"
    assert (template["type"], template["state_key"], template["sender"]) == (
        "m.room.member",
        "@bob:remote.test",
        "@bob:remote.test",
    )
    assert template["content"] == {"membership": "join"}

    answer, join_id, _ = await remote_join(client, remote, room_id, "@bob:remote.test")
    # The join comes back signed by both servers; the state before it holds alice's join.
    assert set(answer["event"]["signatures"]) == {"remote.test", "test"}
    state = {(e["type"], e["state_key"]) for e in answer["state"]}
    assert ("m.room.create", "") in state and ("m.room.member", "@alice:test") in state
    assert ("m.room.member", "@bob:remote.test") not in state
    assert answer["members_omitted"] is False
    assert answer["servers_in_room"] == ["remote.test", "test"]
    chain_ids = {compute_event_id(e, KNOWN_ROOM_VERSIONS["12"]) for e in answer["auth_chain"]}
    assert chain_ids  # the create event, alice's join, power levels...
    # Alice sees bob join.
    members = await client.get(
        f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members", headers=auth_header(token)
    )
    assert "@bob:remote.test" in members.json()["joined"], members.text
    timeline = (await sync(client, token))["rooms"]["join"][room_id]["timeline"]["events"]
    assert join_id in [e["event_id"] for e in timeline]

    # The reads, now that remote.test is in the room.
    r = await signed(client, remote, "GET", f"{FED}/v1/event/{q(join_id)}")
    assert r.status_code == 200, r.text
    assert r.json()["origin"] == "test"
    assert compute_event_id(r.json()["pdus"][0], KNOWN_ROOM_VERSIONS["12"]) == join_id

    r = await signed(
        client, remote, "GET", f"{FED}/v1/state_ids/{q(room_id)}", {"event_id": join_id}
    )
    assert r.status_code == 200, r.text
    ids = r.json()
    assert sorted(ids["pdu_ids"]) == sorted(
        compute_event_id(e, KNOWN_ROOM_VERSIONS["12"]) for e in answer["state"]
    )
    assert set(ids["auth_chain_ids"]) <= chain_ids

    r = await signed(client, remote, "GET", f"{FED}/v1/state/{q(room_id)}", {"event_id": join_id})
    assert r.status_code == 200, r.text
    assert len(r.json()["pdus"]) == len(ids["pdu_ids"])
    assert len(r.json()["auth_chain"]) == len(ids["auth_chain_ids"])

    r = await signed(client, remote, "GET", f"{FED}/v1/event_auth/{q(room_id)}/{q(join_id)}")
    assert r.status_code == 200, r.text
    auth = {compute_event_id(e, KNOWN_ROOM_VERSIONS["12"]) for e in r.json()["auth_chain"]}
    assert auth and auth <= chain_ids

    # Alice sends three messages; backfill from the last walks back through them.
    sent = []
    for n in range(3):
        r = await client.put(
            f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/t{n}",
            headers=auth_header(token),
            json={"msgtype": "m.text", "body": f"m{n}"},
        )
        sent.append(r.json()["event_id"])
    r = await signed(
        client, remote, "GET", f"{FED}/v1/backfill/{q(room_id)}", {"v": sent[-1], "limit": 3}
    )
    assert r.status_code == 200, r.text
    got = [compute_event_id(e, KNOWN_ROOM_VERSIONS["12"]) for e in r.json()["pdus"]]
    assert got == [sent[2], sent[1], sent[0]]
    r = await signed(
        client, remote, "GET", f"{FED}/v1/backfill/{q(room_id)}", {"v": sent[-1], "limit": 5}
    )
    got = [compute_event_id(e, KNOWN_ROOM_VERSIONS["12"]) for e in r.json()["pdus"]]
    assert got[:4] == [sent[2], sent[1], sent[0], join_id]

    # get_missing_events: what lies between the join and the last message, oldest first.
    r = await signed(
        client,
        remote,
        "POST",
        f"{FED}/v1/get_missing_events/{q(room_id)}",
        content={"earliest_events": [join_id], "latest_events": [sent[2]], "limit": 10},
    )
    assert r.status_code == 200, r.text
    got = [compute_event_id(e, KNOWN_ROOM_VERSIONS["12"]) for e in r.json()["events"]]
    assert got == [sent[0], sent[1]]
    r = await signed(
        client,
        remote,
        "POST",
        f"{FED}/v1/get_missing_events/{q(room_id)}",
        content={"earliest_events": [join_id], "latest_events": [sent[2]], "limit": 1},
    )
    got = [compute_event_id(e, KNOWN_ROOM_VERSIONS["12"]) for e in r.json()["events"]]
    assert got == [sent[1]]


async def test_reads_are_refused_to_servers_not_in_the_room(
    fed: Fed, remote: FakeRemote, room: tuple[str, str], clock: FakeClock
) -> None:
    hs, client = fed
    room_id, token = room
    state = await client.get(
        f"/_matrix/client/v3/rooms/{q(room_id)}/state", headers=auth_header(token)
    )
    create_id = next(e["event_id"] for e in state.json() if e["type"] == "m.room.create")
    for method, path, query, content in [
        ("GET", f"/v1/event/{q(create_id)}", None, None),
        ("GET", f"/v1/state/{q(room_id)}", {"event_id": create_id}, None),
        ("GET", f"/v1/state_ids/{q(room_id)}", {"event_id": create_id}, None),
        ("GET", f"/v1/event_auth/{q(room_id)}/{q(create_id)}", None, None),
        ("GET", f"/v1/backfill/{q(room_id)}", {"v": create_id, "limit": 5}, None),
        (
            "POST",
            f"/v1/get_missing_events/{q(room_id)}",
            None,
            {"earliest_events": [], "latest_events": [create_id]},
        ),
    ]:
        r = await signed(client, remote, method, FED + path, query, content)
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), (path, r.text)
    # Unknown room, unknown event: 404.
    unknown_room = "!nowhere:test"
    r = await signed(
        client, remote, "GET", f"{FED}/v1/state_ids/{q(unknown_room)}", {"event_id": create_id}
    )
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await signed(client, remote, "GET", f"{FED}/v1/event/{q('$nothing')}")
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    await remote_join(client, remote, room_id, "@bob:remote.test")
    r = await signed(
        client, remote, "GET", f"{FED}/v1/state_ids/{q(room_id)}", {"event_id": "$unknown"}
    )
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    # Bad parameters: missing event_id, v, limit; a bad limit; a bad body.
    for method, path, query, content, status, errcode in [
        ("GET", f"/v1/state_ids/{q(room_id)}", None, None, 400, "M_MISSING_PARAM"),
        ("GET", f"/v1/state/{q(room_id)}", None, None, 400, "M_MISSING_PARAM"),
        ("GET", f"/v1/backfill/{q(room_id)}", {"limit": 5}, None, 400, "M_MISSING_PARAM"),
        ("GET", f"/v1/backfill/{q(room_id)}", {"v": create_id}, None, 400, "M_MISSING_PARAM"),
        (
            "GET",
            f"/v1/backfill/{q(room_id)}",
            {"v": create_id, "limit": "x"},
            None,
            400,
            "M_INVALID_PARAM",
        ),
        ("GET", f"/v1/backfill/{q(room_id)}", {"v": "nope", "limit": 1}, None, 400, None),
        (
            "POST",
            f"/v1/get_missing_events/{q(room_id)}",
            None,
            {"latest_events": [create_id]},
            400,
            "M_MISSING_PARAM",
        ),
        (
            "POST",
            f"/v1/get_missing_events/{q(room_id)}",
            None,
            {"earliest_events": [], "latest_events": [create_id], "limit": "5"},
            400,
            "M_BAD_JSON",
        ),
        ("POST", f"/v1/get_missing_events/{q(room_id)}", None, [1], 400, "M_BAD_JSON"),
        (
            "POST",
            f"/v1/get_missing_events/{q(room_id)}",
            None,
            {"earliest_events": [], "latest_events": [create_id] * 101},
            400,
            "M_BAD_JSON",
        ),
        (
            "GET",
            f"/v1/backfill/{q(room_id)}",
            {"v": [create_id] * 101, "limit": 1},
            None,
            400,
            "M_INVALID_PARAM",
        ),
    ]:
        r = await signed(client, remote, method, FED + path, query, content)
        assert r.status_code == status, (path, query, r.text)
        if errcode is not None:
            assert r.json()["errcode"] == errcode, (path, query, r.text)

    # Another server, known by its keys but with nobody in the room: 403.
    other = FakeRemote("other.test")
    await store_keys(hs, other, clock)
    r = await signed(client, other, "GET", f"{FED}/v1/event/{q(create_id)}")
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_history_visibility_for_servers(
    fed: Fed, remote: FakeRemote, room: tuple[str, str]
) -> None:
    _, client = fed
    room_id, token = room
    headers = auth_header(token)
    r = await client.put(
        f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.history_visibility",
        headers=headers,
        json={"history_visibility": "joined"},
    )
    assert r.status_code == 200, r.text
    r = await client.put(
        f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/before",
        headers=headers,
        json={"msgtype": "m.text", "body": "before"},
    )
    before = r.json()["event_id"]
    _, join_id, _ = await remote_join(client, remote, room_id, "@bob:remote.test")
    r = await client.put(
        f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/after",
        headers=headers,
        json={"msgtype": "m.text", "body": "after"},
    )
    after = r.json()["event_id"]
    r = await signed(client, remote, "GET", f"{FED}/v1/event/{q(before)}")
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await signed(client, remote, "GET", f"{FED}/v1/event/{q(after)}")
    assert r.status_code == 200, r.text
    r = await signed(
        client, remote, "GET", f"{FED}/v1/backfill/{q(room_id)}", {"v": after, "limit": 10}
    )
    got = [compute_event_id(e, KNOWN_ROOM_VERSIONS["12"]) for e in r.json()["pdus"]]
    assert after in got and join_id in got and before not in got


async def test_server_acl_refuses_denied_servers(
    fed: Fed, remote: FakeRemote, room: tuple[str, str]
) -> None:
    _, client = fed
    room_id, token = room
    _, join_id, _ = await remote_join(client, remote, room_id, "@bob:remote.test")
    r = await client.put(
        f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.server_acl",
        headers=auth_header(token),
        json={"allow": ["*"], "deny": ["*.test:*", "remote.*"], "allow_ip_literals": False},
    )
    assert r.status_code == 200, r.text
    for method, path, query in [
        ("GET", f"/v1/event/{q(join_id)}", None),
        ("GET", f"/v1/state_ids/{q(room_id)}", {"event_id": join_id}),
        ("GET", f"/v1/make_join/{q(room_id)}/{q('@carol:remote.test')}", {"ver": "12"}),
        ("GET", f"/v1/make_leave/{q(room_id)}/{q('@bob:remote.test')}", None),
    ]:
        r = await signed(client, remote, method, FED + path, query)
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), (path, r.text)


def test_acl_rules() -> None:
    from homeserver.federation.acl import acl_allows

    acl = {"allow": ["*.example.org", "ok.test"], "deny": ["bad.example.org"]}
    assert acl_allows(acl, "a.example.org")
    assert acl_allows(acl, "a.example.org:8448")  # the port is never considered
    assert acl_allows(acl, "OK.test")
    assert not acl_allows(acl, "bad.example.org:1")
    assert not acl_allows(acl, "example.org")
    assert not acl_allows({}, "any.test")  # no allow list: nobody
    assert acl_allows({"allow": ["*"]}, "1.2.3.4:80")
    assert not acl_allows({"allow": ["*"], "allow_ip_literals": False}, "1.2.3.4:80")
    assert not acl_allows({"allow": ["*"], "allow_ip_literals": False}, "[::1]:8448")
    assert acl_allows({"allow": ["*"], "allow_ip_literals": "no"}, "[::1]")  # not a boolean
    assert acl_allows({"allow": ["?.test", 5]}, "a.test")
    assert not acl_allows({"allow": ["?.test"]}, "ab.test")


async def test_make_and_send_join_refuse_bad_input(
    fed: Fed, remote: FakeRemote, room: tuple[str, str], clock: FakeClock
) -> None:
    hs, client = fed
    room_id, token = room
    path = f"{FED}/v1/make_join/{q(room_id)}/{q('@bob:remote.test')}"
    r = await signed(client, remote, "GET", path, {"ver": ["1", "2"]})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    assert r.json()["room_version"] == "12"
    r = await signed(client, remote, "GET", path)  # no ver: version 1 only
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    r = await signed(
        client,
        remote,
        "GET",
        f"{FED}/v1/make_join/{q(room_id)}/{q('@bob:other.test')}",
        {"ver": "12"},
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await signed(
        client,
        remote,
        "GET",
        f"{FED}/v1/make_join/{q('!nope:test')}/{q('@bob:remote.test')}",
        {"ver": "12"},
    )
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    made = await make(client, remote, "join", room_id, "@bob:remote.test")
    template = made["event"]
    good, good_id = sign_template(remote, template, "12")

    async def send(pdu: Any, event_id: str, room: str = room_id) -> httpx.Response:
        return await signed(
            client, remote, "PUT", f"{FED}/v2/send_join/{q(room)}/{q(event_id)}", content=pdu
        )

    def variant(**changes: Any) -> tuple[JsonDict, str]:
        return sign_template(remote, {**template, **changes}, "12")

    cases: list[tuple[str, Any, str, int, str]] = [
        ("event ID mismatch", good, "$not-the-id", 400, "M_BAD_JSON"),
        ("not a member event", *variant(type="m.room.message"), 400, "M_BAD_JSON"),
        ("leave, not join", *variant(content={"membership": "leave"}), 400, "M_BAD_JSON"),
        ("another room", *variant(room_id="!other:test"), 400, "M_BAD_JSON"),
        (
            "another server's user",
            *variant(sender="@eve:other.test", state_key="@eve:other.test"),
            403,
            "M_FORBIDDEN",
        ),
        ("sender is not the user", *variant(sender="@eve:remote.test"), 400, "M_BAD_JSON"),
        ("not an object", [good], good_id, 400, "M_BAD_JSON"),
        ("unknown prev_events", *variant(prev_events=["$unknown"]), 400, "M_BAD_JSON"),
    ]
    for name, pdu, event_id, status, errcode in cases:
        r = await send(pdu, event_id)
        assert (r.status_code, r.json().get("errcode")) == (status, errcode), (name, r.text)
    # Badly signed: a signature by another key under the same key ID.
    forger = FakeRemote("remote.test")
    forged, forged_id = sign_template(forger, template, "12")
    r = await send(forged, forged_id)
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), r.text
    # Content changed after signing: the hash no longer matches.
    tampered = copy.deepcopy(good)
    tampered["content"]["displayname"] = "Mallory"
    r = await send(tampered, compute_event_id(tampered, KNOWN_ROOM_VERSIONS["12"]))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), r.text
    # Out-of-range integers in the event.
    r = await send({**good, "depth": 2**60}, good_id)
    assert r.status_code == 400, r.text
    # An unknown room.
    r = await send(good, good_id, "!nope:test")
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    # Nothing of that was stored: the room has alice alone.
    members = await client.get(
        f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members", headers=auth_header(token)
    )
    assert list(members.json()["joined"]) == ["@alice:test"]
    # The good one still goes through, and again when retried.
    r = await send(good, good_id)
    assert r.status_code == 200, r.text
    again = await send(good, good_id)
    assert again.status_code == 200, again.text
    assert again.json()["state"] == r.json()["state"]


async def test_invite_only_room_refuses_uninvited_join(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    room_id = await create_room(client, token, preset="private_chat")
    r = await signed(
        client,
        remote,
        "GET",
        f"{FED}/v1/make_join/{q(room_id)}/{q('@bob:remote.test')}",
        {"ver": "12"},
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    # Alice invites bob: the invite is in the room as it is built, then bob's server is
    # asked to take it; unreachable here (no network), so it is revoked and the client
    # told (502), and bob still cannot join.
    r = await client.post(
        f"/_matrix/client/v3/rooms/{q(room_id)}/invite",
        headers=auth_header(token),
        json={"user_id": "@bob:remote.test"},
    )
    assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), r.text
    r = await client.get(
        f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.member/{q('@bob:remote.test')}",
        headers=auth_header(token),
    )
    assert r.status_code == 200 and r.json()["membership"] == "leave", r.text
    r = await signed(
        client,
        remote,
        "GET",
        f"{FED}/v1/make_join/{q(room_id)}/{q('@bob:remote.test')}",
        {"ver": "12"},
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_remote_user_leaves(fed: Fed, remote: FakeRemote, room: tuple[str, str]) -> None:
    _, client = fed
    room_id, token = room
    # Not joined yet: the auth rules refuse a leave template? A leave of a user with no
    # membership is refused by the auth rules.
    r = await signed(
        client, remote, "GET", f"{FED}/v1/make_leave/{q(room_id)}/{q('@bob:remote.test')}"
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    await remote_join(client, remote, room_id, "@bob:remote.test")
    made = await make(client, remote, "leave", room_id, "@bob:remote.test")
    assert made["event"]["content"] == {"membership": "leave"}
    pdu, event_id = sign_template(remote, made["event"], made["room_version"])
    # A join sent to send_leave is refused.
    join, join_id = sign_template(
        remote, {**made["event"], "content": {"membership": "join"}}, "12"
    )
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/send_leave/{q(room_id)}/{q(join_id)}", content=join
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/send_leave/{q(room_id)}/{q(event_id)}", content=pdu
    )
    assert r.status_code == 200, r.text
    assert r.json() == {}
    members = await client.get(
        f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members", headers=auth_header(token)
    )
    assert list(members.json()["joined"]) == ["@alice:test"]


async def test_remote_user_knocks(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    room_id = await create_room(
        client,
        token,
        name="Knock here",
        initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
    )
    path = f"{FED}/v1/make_knock/{q(room_id)}/{q('@bob:remote.test')}"
    r = await signed(client, remote, "GET", path)
    assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    r = await signed(client, remote, "GET", path, {"ver": "6"})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    made = await make(client, remote, "knock", room_id, "@bob:remote.test")
    assert made["event"]["content"] == {"membership": "knock"}
    pdu, event_id = sign_template(remote, made["event"], made["room_version"])
    r = await signed(
        client, remote, "PUT", f"{FED}/v1/send_knock/{q(room_id)}/{q(event_id)}", content=pdu
    )
    assert r.status_code == 200, r.text
    stripped = {e["type"]: e for e in r.json()["knock_room_state"]}
    assert stripped["m.room.name"]["content"] == {"name": "Knock here"}
    assert stripped["m.room.join_rules"]["content"] == {"join_rule": "knock"}
    # A public room refuses knocks.
    public = await create_room(client, token, preset="public_chat")
    r = await signed(
        client,
        remote,
        "GET",
        f"{FED}/v1/make_knock/{q(public)}/{q('@bob:remote.test')}",
        {"ver": "12"},
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")


def remote_invite(remote: FakeRemote, invitee: str, room_id: str) -> tuple[JsonDict, str]:
    pdu: JsonDict = {
        "room_id": room_id,
        "sender": f"@carol:{remote.server_name}",
        "state_key": invitee,
        "type": "m.room.member",
        "content": {"membership": "invite"},
        "origin_server_ts": 1_000,
        "depth": 5,
        "prev_events": ["$parent"],
        "auth_events": ["$power", "$carol"],
    }
    return sign_template(remote, pdu, "11")


async def test_remote_server_invites_our_user(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    await sync(client, token)
    room_id = "!elsewhere:remote.test"
    pdu, event_id = remote_invite(remote, "@alice:test", room_id)
    stripped_state = [
        {
            "type": "m.room.name",
            "state_key": "",
            "sender": "@carol:remote.test",
            "content": {"name": "Over there"},
        }
    ]
    body = {"room_version": "11", "event": pdu, "invite_room_state": stripped_state}
    path = f"{FED}/v2/invite/{q(room_id)}/{q(event_id)}"
    r = await signed(client, remote, "PUT", path, content=body)
    assert r.status_code == 200, r.text
    signed_event = r.json()["event"]
    assert set(signed_event["signatures"]) == {"remote.test", "test"}
    invites = (await sync(client, token))["rooms"]["invite"]
    state = invites[room_id]["invite_state"]["events"]
    assert {
        "type": "m.room.name",
        "state_key": "",
        "sender": "@carol:remote.test",
        "content": {"name": "Over there"},
    } in state
    assert any(e["type"] == "m.room.member" and e["state_key"] == "@alice:test" for e in state)
    # The same invite again is answered again, and stored once.
    r = await signed(client, remote, "PUT", path, content=body)
    assert r.status_code == 200, r.text


async def test_a_user_who_blocks_invites_refuses_remote_ones(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    r = await client.put(
        "/_matrix/client/v3/user/@alice:test/account_data/m.invite_permission_config",
        headers=auth_header(token),
        json={"default_action": "block"},
    )
    assert r.status_code == 200, r.text
    room_id = "!elsewhere:remote.test"
    pdu, event_id = remote_invite(remote, "@alice:test", room_id)
    body = {"room_version": "11", "event": pdu, "invite_room_state": []}
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/invite/{q(room_id)}/{q(event_id)}", content=body
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_INVITE_BLOCKED")
    assert room_id not in (await sync(client, token)).get("rooms", {}).get("invite", {})


async def test_remote_invites_are_checked(fed: Fed, remote: FakeRemote) -> None:
    _, client = fed
    await register(client, "alice")
    room_id = "!elsewhere:remote.test"
    pdu, event_id = remote_invite(remote, "@alice:test", room_id)
    path = f"{FED}/v2/invite/{q(room_id)}/{q(event_id)}"

    def body(**changes: Any) -> JsonDict:
        return {"room_version": "11", "event": pdu, "invite_room_state": [], **changes}

    nobody, nobody_id = remote_invite(remote, "@nobody:test", room_id)
    elsewhere, elsewhere_id = remote_invite(remote, "@alice:other.test", room_id)
    join = copy.deepcopy(pdu)
    join["content"] = {"membership": "join"}
    join, join_id = sign_template(remote, join, "11")
    forged, forged_id = sign_template(FakeRemote("remote.test"), pdu, "11")
    cases: list[tuple[str, str, Any, int, str]] = [
        ("unknown version", path, body(room_version="99"), 400, "M_INCOMPATIBLE_ROOM_VERSION"),
        ("no event", path, {"room_version": "11"}, 400, "M_MISSING_PARAM"),
        ("id mismatch", f"{FED}/v2/invite/{q(room_id)}/{q('$x')}", body(), 400, "M_BAD_JSON"),
        (
            "other room",
            f"{FED}/v2/invite/{q('!a:remote.test')}/{q(event_id)}",
            body(),
            400,
            "M_BAD_JSON",
        ),
        (
            "unknown user",
            f"{FED}/v2/invite/{q(room_id)}/{q(nobody_id)}",
            body(event=nobody),
            404,
            "M_NOT_FOUND",
        ),
        (
            "not our user",
            f"{FED}/v2/invite/{q(room_id)}/{q(elsewhere_id)}",
            body(event=elsewhere),
            400,
            "M_BAD_JSON",
        ),
        (
            "a join",
            f"{FED}/v2/invite/{q(room_id)}/{q(join_id)}",
            body(event=join),
            400,
            "M_BAD_JSON",
        ),
        (
            "forged",
            f"{FED}/v2/invite/{q(room_id)}/{q(forged_id)}",
            body(event=forged),
            403,
            "M_FORBIDDEN",
        ),
        ("state not a list", path, body(invite_room_state={}), 400, "M_BAD_JSON"),
    ]
    for name, where, content, status, errcode in cases:
        r = await signed(client, remote, "PUT", where, content=content)
        assert (r.status_code, r.json().get("errcode")) == (status, errcode), (name, r.text)


async def test_restricted_join_is_authorised_by_our_user(
    fed: Fed, remote: FakeRemote, room: tuple[str, str]
) -> None:
    _, client = fed
    space_id, token = room  # public: bob may join it
    restricted = await create_room(
        client,
        token,
        initial_state=[
            {
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space_id}],
                },
            }
        ],
    )
    path = f"{FED}/v1/make_join/{q(restricted)}/{q('@bob:remote.test')}"
    # Bob is in no allowed room yet.
    r = await signed(client, remote, "GET", path, {"ver": "12"})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_UNABLE_TO_AUTHORISE_JOIN"), r.text
    await remote_join(client, remote, space_id, "@bob:remote.test")
    made = await make(client, remote, "join", restricted, "@bob:remote.test")
    assert made["event"]["content"] == {
        "membership": "join",
        "join_authorised_via_users_server": "@alice:test",
    }
    pdu, event_id = sign_template(remote, made["event"], made["room_version"])
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/send_join/{q(restricted)}/{q(event_id)}", content=pdu
    )
    assert r.status_code == 200, r.text
    # Our signature, which the restricted join needs, is on the event we answer.
    assert "test" in r.json()["event"]["signatures"]
    members = await client.get(
        f"/_matrix/client/v3/rooms/{q(restricted)}/joined_members", headers=auth_header(token)
    )
    assert set(members.json()["joined"]) == {"@alice:test", "@bob:remote.test"}
    # Naming an authoriser who cannot invite is refused by the auth rules.
    template = {
        **made["event"],
        "content": {"membership": "join", "join_authorised_via_users_server": "@nobody:test"},
    }
    pdu, event_id = sign_template(remote, template, "12")
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/send_join/{q(restricted)}/{q(event_id)}", content=pdu
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), r.text
    # Refused again when retried (it is stored as rejected, never answered as a join).
    r = await signed(
        client, remote, "PUT", f"{FED}/v2/send_join/{q(restricted)}/{q(event_id)}", content=pdu
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), r.text
