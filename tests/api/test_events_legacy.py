"""The deprecated sync API: /initialSync, /events (and peeking), /rooms/{roomId}/initialSync,
/events/{eventId}."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import httpx

from tests.api.test_messages import send
from tests.helpers import auth_header, checked, create_room, register

V3 = "/_matrix/client/v3"
WORLD_READABLE = [
    {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
]


async def test_get_event_by_id(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    room = await create_room(client, alice)
    event_id = await send(client, alice, room, "hello")
    body = checked(await client.get(f"{V3}/events/{quote(event_id)}", headers=auth_header(alice)))
    assert body["event_id"] == event_id and body["room_id"] == room
    assert body["content"]["body"] == "hello"
    # Someone outside the room cannot tell the event exists.
    hidden = await client.get(f"{V3}/events/{quote(event_id)}", headers=auth_header(bob))
    checked(hidden, 404, "M_NOT_FOUND", documented=False)
    unknown = await client.get(f"{V3}/events/{quote('$nowhere')}", headers=auth_header(alice))
    checked(unknown, 404, "M_NOT_FOUND", documented=False)
    bad = await client.get(f"{V3}/events/nowhere", headers=auth_header(alice))
    assert (bad.status_code, bad.json()["errcode"]) == (400, "M_INVALID_PARAM")
    anonymous = await client.get(f"{V3}/events/{quote(event_id)}")
    assert anonymous.json()["errcode"] == "M_MISSING_TOKEN"


async def test_room_initial_sync(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    room = await create_room(client, alice, preset="public_chat", name="Hall")
    event_id = await send(client, alice, room, "hello")
    url = f"{V3}/rooms/{quote(room)}/initialSync"
    body = checked(await client.get(url, headers=auth_header(alice)))
    assert body["room_id"] == room and body["membership"] == "join"
    assert body["visibility"] == "public"
    assert body["messages"]["chunk"][-1]["event_id"] == event_id
    assert {"m.room.create", "m.room.name"} <= {e["type"] for e in body["state"]}
    # Events carry user_id, the sender's name on these old endpoints (as Synapse).
    for event in [*body["state"], *body["messages"]["chunk"]]:
        assert event["user_id"] == event["sender"]
    outsider = await client.get(url, headers=auth_header(bob))
    assert (outsider.status_code, outsider.json()["errcode"]) == (403, "M_FORBIDDEN")
    bad = await client.get(f"{V3}/rooms/nowhere/initialSync", headers=auth_header(alice))
    assert (bad.status_code, bad.json()["errcode"]) == (400, "M_INVALID_PARAM")
    # The whole room fits: ``start`` is still given, and /messages finds nothing before it.
    earlier = checked(
        await client.get(
            f"{V3}/rooms/{quote(room)}/messages",
            params={"dir": "b", "from": body["messages"]["start"]},
            headers=auth_header(alice),
        )
    )
    assert earlier["chunk"] == [] and "end" not in earlier
    # ``limit`` (Synapse's parameter): at most that many messages, 0 for none; the rest
    # before ``start``.
    for limit in (0, 2):
        page = checked(await client.get(url, params={"limit": limit}, headers=auth_header(alice)))
        assert len(page["messages"]["chunk"]) == limit
        assert page["messages"]["start"]
    nothing = checked(await client.get(url, params={"limit": 0}, headers=auth_header(alice)))
    before_nothing = checked(
        await client.get(
            f"{V3}/rooms/{quote(room)}/messages",
            params={"dir": "b", "from": nothing["messages"]["start"], "limit": 1},
            headers=auth_header(alice),
        )
    )
    assert before_nothing["chunk"][0]["event_id"] == event_id
    page = checked(await client.get(url, params={"limit": 2}, headers=auth_header(alice)))
    before = checked(
        await client.get(
            f"{V3}/rooms/{quote(room)}/messages",
            params={"dir": "b", "from": page["messages"]["start"], "limit": 1},
            headers=auth_header(alice),
        )
    )
    assert before["chunk"][0]["event_id"] not in {e["event_id"] for e in page["messages"]["chunk"]}
    for bad_limit in ("x", "-1"):
        r = await client.get(url, params={"limit": bad_limit}, headers=auth_header(alice))
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), bad_limit


async def test_room_initial_sync_of_a_world_readable_room(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    room = await create_room(client, alice, initial_state=WORLD_READABLE)
    event_id = await send(client, alice, room, "for everyone")
    url = f"{V3}/rooms/{quote(room)}/initialSync"
    body = checked(await client.get(url, headers=auth_header(bob)))
    assert "membership" not in body and body["visibility"] == "private"
    assert body["messages"]["chunk"][-1]["event_id"] == event_id


async def test_initial_sync_then_events(client: httpx.AsyncClient) -> None:
    alice_id, alice = await register(client, "alice")
    bob_id, bob = await register(client, "bob")
    room = await create_room(client, alice)
    first = await send(client, alice, room, "before")
    invited = await create_room(client, bob)
    invite = {"user_id": alice_id}
    checked(
        await client.post(
            f"{V3}/rooms/{quote(invited)}/invite", headers=auth_header(bob), json=invite
        )
    )
    body = checked(
        await client.get(f"{V3}/initialSync", params={"limit": 5}, headers=auth_header(alice))
    )
    rooms = {r["room_id"]: r for r in body["rooms"]}
    assert rooms[room]["membership"] == "join"
    assert rooms[room]["messages"]["chunk"][-1]["event_id"] == first
    assert all(e["room_id"] == room for e in rooms[room]["messages"]["chunk"])
    assert rooms[invited]["membership"] == "invite"
    assert rooms[invited]["invite"]["sender"] == bob_id
    # archived=true lists the rooms left too.
    left = await create_room(client, alice)
    await send(client, alice, left, "last words")
    leave = await client.post(
        f"{V3}/rooms/{quote(left)}/leave", headers=auth_header(alice), json={}
    )
    checked(leave)
    plain = checked(await client.get(f"{V3}/initialSync", headers=auth_header(alice)))
    assert left not in [r["room_id"] for r in plain["rooms"]]
    archived = checked(
        await client.get(
            f"{V3}/initialSync", params={"archived": "true"}, headers=auth_header(alice)
        )
    )
    gone = {r["room_id"]: r for r in archived["rooms"]}[left]
    assert gone["membership"] == "leave"
    assert "last words" in [e["content"].get("body") for e in gone["messages"]["chunk"]]
    body = plain
    # /events from the end of the initial sync: what happened since.
    second = await send(client, alice, room, "after")
    events = checked(
        await client.get(
            f"{V3}/events", params={"from": body["end"], "timeout": 0}, headers=auth_header(alice)
        )
    )
    assert events["start"] == body["end"]
    assert [e["event_id"] for e in events["chunk"] if e["type"] == "m.room.message"] == [second]
    assert all(e["room_id"] == room for e in events["chunk"] if "event_id" in e)
    # A long-poll from the end returns when something happens.
    poll = asyncio.create_task(
        client.get(
            f"{V3}/events",
            params={"from": events["end"], "timeout": 10_000},
            headers=auth_header(alice),
            timeout=20,
        )
    )
    await asyncio.sleep(0.2)
    third = await send(client, alice, room, "woken")
    woken = checked(await poll)
    assert third in [e.get("event_id") for e in woken["chunk"]]


async def test_events_bad_requests(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    headers = auth_header(alice)
    cases = [
        ({"from": "garbage"}, 400, "M_INVALID_PARAM"),
        ({"timeout": "soon"}, 400, "M_INVALID_PARAM"),
        ({"timeout": -5}, 400, "M_INVALID_PARAM"),
        ({"room_id": "nowhere"}, 400, "M_INVALID_PARAM"),
        ({"room_id": "!nowhere:test"}, 403, "M_FORBIDDEN"),
        ({"limit": "many"}, 400, "M_INVALID_PARAM"),
        ({"limit": -1}, 400, "M_INVALID_PARAM"),
    ]
    for params, status, errcode in cases:
        r = await client.get(f"{V3}/events", params=params, headers=headers)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), (params, r.text)
    bad_limit = await client.get(f"{V3}/initialSync", params={"limit": "x"}, headers=headers)
    assert (bad_limit.status_code, bad_limit.json()["errcode"]) == (400, "M_INVALID_PARAM")
    bad_archived = await client.get(
        f"{V3}/initialSync", params={"archived": "maybe"}, headers=headers
    )
    assert (bad_archived.status_code, bad_archived.json()["errcode"]) == (400, "M_INVALID_PARAM")
    for path in ("/initialSync", "/events"):
        r = await client.get(V3 + path)
        assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_peeking_into_a_world_readable_room(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    room = await create_room(client, alice, initial_state=WORLD_READABLE)
    private = await create_room(client, alice)
    start = checked(
        await client.get(
            f"{V3}/events", params={"room_id": room, "timeout": 0}, headers=auth_header(bob)
        )
    )
    assert start["chunk"] == []
    said = await send(client, alice, room, "anyone may read this")
    peek = checked(
        await client.get(
            f"{V3}/events",
            params={"room_id": room, "from": start["end"], "timeout": 0},
            headers=auth_header(bob),
        )
    )
    assert [e["event_id"] for e in peek["chunk"]] == [said]
    # A long-poll on the room wakes on its next event.
    poll = asyncio.create_task(
        client.get(
            f"{V3}/events",
            params={"room_id": room, "from": peek["end"], "timeout": 10_000},
            headers=auth_header(bob),
            timeout=20,
        )
    )
    await asyncio.sleep(0.2)
    later = await send(client, alice, room, "and this")
    assert [e["event_id"] for e in checked(await poll)["chunk"]] == [later]
    refused = await client.get(
        f"{V3}/events", params={"room_id": private}, headers=auth_header(bob)
    )
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_account_data_receipts_and_presence_in_the_old_endpoints(
    client: httpx.AsyncClient,
) -> None:
    """Account data (without push rules), tags, read receipts and presence (its user in
    ``content.user_id``) in /initialSync, a room's initial sync and /events; a departed
    member's room initial sync has no presence or receipts."""
    alice_id, alice = await register(client, "alice")
    headers = auth_header(alice)
    room = await create_room(client, alice, preset="public_chat")
    event_id = await send(client, alice, room, "hello")
    data = f"{V3}/user/{quote(alice_id)}"
    checked(await client.put(f"{data}/account_data/my.type", json={"a": 1}, headers=headers))
    room_data = f"{data}/rooms/{quote(room)}"
    checked(await client.put(f"{room_data}/account_data/my.type", json={"b": 2}, headers=headers))
    checked(await client.put(f"{room_data}/tags/work", json={"order": 0.5}, headers=headers))
    receipt = f"{V3}/rooms/{quote(room)}/receipt/m.read/{quote(event_id)}"
    checked(await client.post(receipt, json={}, headers=headers))
    status = {"presence": "online", "status_msg": "here"}
    checked(
        await client.put(f"{V3}/presence/{quote(alice_id)}/status", json=status, headers=headers)
    )

    body = checked(await client.get(f"{V3}/initialSync", headers=headers))
    assert body["account_data"] == [{"type": "my.type", "content": {"a": 1}}]
    [entry] = body["rooms"]
    assert {"type": "my.type", "content": {"b": 2}} in entry["account_data"]
    assert {"type": "m.tag", "content": {"tags": {"work": {"order": 0.5}}}} in entry["account_data"]
    [receipts] = body["receipts"]
    assert receipts["room_id"] == room and receipts["type"] == "m.receipt"
    assert alice_id in receipts["content"][event_id]["m.read"]
    [mine] = [p for p in body["presence"] if p["content"]["user_id"] == alice_id]
    assert mine["content"]["presence"] == "online" and mine["content"]["status_msg"] == "here"

    url = f"{V3}/rooms/{quote(room)}/initialSync"
    one = checked(await client.get(url, headers=headers))
    assert {"type": "my.type", "content": {"b": 2}} in one["account_data"]
    assert [p["content"]["user_id"] for p in one["presence"]] == [alice_id]
    assert one["receipts"][0]["content"][event_id]["m.read"][alice_id]["ts"] > 0

    # /events: account data and tags changed after the token, room data with its room.
    end = body["end"]
    checked(await client.put(f"{data}/account_data/my.type", json={"a": 3}, headers=headers))
    checked(await client.put(f"{room_data}/tags/home", json={}, headers=headers))
    # Not ClientEvents, so outside the spec's schema for ``chunk``; Synapse's stream has them
    # (as it has presence, typing and receipts), and clients of this old endpoint read them.
    events = checked(
        await client.get(f"{V3}/events", params={"from": end, "timeout": 0}, headers=headers),
        documented=False,
    )
    assert {"type": "my.type", "content": {"a": 3}} in events["chunk"]
    [tags] = [e for e in events["chunk"] if e["type"] == "m.tag"]
    assert tags["room_id"] == room and set(tags["content"]["tags"]) == {"work", "home"}
    limited = checked(
        await client.get(f"{V3}/events", params={"from": end, "limit": 0}, headers=headers),
        documented=False,
    )
    assert "start" in limited

    # Departed: the room as of the leaving, without presence or receipts.
    checked(await client.post(f"{V3}/rooms/{quote(room)}/leave", json={}, headers=headers))
    gone = checked(await client.get(url, headers=headers))
    assert gone["membership"] == "leave"
    assert gone["presence"] == [] and gone["receipts"] == []
