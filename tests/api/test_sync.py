"""GET /sync: initial and incremental, long-poll, limited timelines, filters, sections."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

SYNC = "/_matrix/client/v3/sync"


async def _sync(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    r = await client.get(
        SYNC, params={k: str(v) for k, v in params.items()}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


async def _room(client: httpx.AsyncClient, token: str, **body: Any) -> str:
    r = await client.post("/_matrix/client/v3/createRoom", json=body, headers=auth_header(token))
    assert r.status_code == 200, r.text
    return str(r.json()["room_id"])


async def _send(
    client: httpx.AsyncClient, token: str, room_id: str, text: str, txn: str | None = None
) -> str:
    r = await client.put(
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn or text}",
        json={"msgtype": "m.text", "body": text},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def _join(client: httpx.AsyncClient, token: str, room_id: str) -> None:
    r = await client.post(f"/_matrix/client/v3/join/{room_id}", json={}, headers=auth_header(token))
    assert r.status_code == 200, r.text


async def test_initial_sync_has_state_and_timeline(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token, name="Kitchen", topic="tea")
    await _send(client, token, room_id, "first")
    body = await _sync(client, token)
    room = body["rooms"]["join"][room_id]
    timeline = room["timeline"]["events"]
    assert timeline[-1]["content"]["body"] == "first"
    # Nine events in all, under the default limit of 10: the whole room is the timeline.
    assert room["timeline"]["limited"] is False
    assert timeline[0]["type"] == "m.room.create"
    state_types = {e["type"] for e in room["state"]["events"]}
    timeline_types = {e["type"] for e in timeline}
    # State at the start of the timeline plus the timeline's own state events cover the room.
    assert {
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.name",
        "m.room.topic",
    } <= state_types | timeline_types
    assert room["summary"]["m.joined_member_count"] == 1
    assert all("room_id" not in e for e in timeline)


async def test_incremental_sync_gets_only_new_events(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room_id = await _room(client, token)
    since = (await _sync(client, token))["next_batch"]
    event_id = await _send(client, token, room_id, "new")
    body = await _sync(client, token, since=since)
    events = body["rooms"]["join"][room_id]["timeline"]["events"]
    assert [e["event_id"] for e in events] == [event_id]
    assert body["rooms"]["join"][room_id]["timeline"]["limited"] is False
    assert events[0]["unsigned"]["transaction_id"] == "new"
    # Nothing new: an immediate, empty answer with the same position.
    again = await _sync(client, token, since=body["next_batch"])
    assert "rooms" not in again
    assert again["next_batch"] == body["next_batch"]


async def test_long_poll_returns_when_a_message_arrives(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    room_id = await _room(client, a_token, preset="public_chat")
    await _join(client, b_token, room_id)
    since = (await _sync(client, b_token))["next_batch"]
    waiting = asyncio.create_task(_sync(client, b_token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    event_id = await _send(client, a_token, room_id, "wake up")
    body = await asyncio.wait_for(waiting, 10)
    assert [e["event_id"] for e in body["rooms"]["join"][room_id]["timeline"]["events"]] == [
        event_id
    ]


async def test_long_poll_times_out_empty(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    await _room(client, token)
    since = (await _sync(client, token))["next_batch"]
    body = await _sync(client, token, since=since, timeout=50)
    assert "rooms" not in body and body["next_batch"] == since
    # It waited without computing, but the answer at the timeout is a whole one.
    assert body["device_one_time_keys_count"] == {"signed_curve25519": 0}


async def test_long_poll_on_a_current_token_wakes_for_every_stream(
    client: httpx.AsyncClient,
) -> None:
    """A long-poll whose token is current waits before computing anything; each kind of
    news still wakes it: a message, account data, a to-device message."""
    alice, a_token = await register(client, "alice")
    room_id = await _room(client, a_token)
    since = (await _sync(client, a_token))["next_batch"]

    async def poll_during(action: Any) -> dict[str, Any]:
        nonlocal since
        waiting = asyncio.create_task(_sync(client, a_token, since=since, timeout=30_000))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await action()
        body: dict[str, Any] = await asyncio.wait_for(waiting, 10)
        since = body["next_batch"]
        return body

    async def message() -> None:
        await _send(client, a_token, room_id, "news")

    async def account_data() -> None:
        r = await client.put(
            f"/_matrix/client/v3/user/{alice}/account_data/org.example",
            json={"x": 1},
            headers=auth_header(a_token),
        )
        assert r.status_code == 200, r.text

    async def to_device() -> None:
        r = await client.put(
            "/_matrix/client/v3/sendToDevice/org.example/t1",
            json={"messages": {alice: {"*": {"hello": True}}}},
            headers=auth_header(a_token),
        )
        assert r.status_code == 200, r.text

    body = await poll_during(message)
    assert body["rooms"]["join"][room_id]["timeline"]["events"][0]["content"]["body"] == "news"
    body = await poll_during(account_data)
    assert body["account_data"]["events"] == [{"type": "org.example", "content": {"x": 1}}]
    body = await poll_during(to_device)
    assert [e["content"] for e in body["to_device"]["events"]] == [{"hello": True}]
    assert "rooms" not in body  # each answer carries its own news only


async def test_long_poll_wakes_for_an_invite(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    since = (await _sync(client, b_token))["next_batch"]
    waiting = asyncio.create_task(_sync(client, b_token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    room_id = await _room(client, a_token, name="Secret", invite=[bob])
    body = await asyncio.wait_for(waiting, 10)
    stripped = body["rooms"]["invite"][room_id]["invite_state"]["events"]
    assert {"m.room.create", "m.room.member", "m.room.join_rules"} <= {e["type"] for e in stripped}
    # stripped state carries no event IDs or timestamps
    assert all(set(e) == {"type", "state_key", "sender", "content"} for e in stripped)


async def test_limited_timeline_then_messages_from_prev_batch(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room_id = await _room(client, token)
    since = (await _sync(client, token))["next_batch"]
    sent = [await _send(client, token, room_id, f"m{i}") for i in range(25)]
    body = await _sync(client, token, since=since, filter='{"room":{"timeline":{"limit":5}}}')
    timeline = body["rooms"]["join"][room_id]["timeline"]
    assert timeline["limited"] is True
    assert [e["event_id"] for e in timeline["events"]] == sent[-5:]
    r = await client.get(
        f"/_matrix/client/v3/rooms/{room_id}/messages",
        params={"from": timeline["prev_batch"], "dir": "b", "limit": "20", "to": since},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    older = [e["event_id"] for e in r.json()["chunk"]]
    assert older == list(reversed(sent[:-5]))


async def test_newly_joined_room_has_full_state(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    room_id = await _room(client, a_token, preset="public_chat", name="Lobby")
    since = (await _sync(client, b_token))["next_batch"]
    await _join(client, b_token, room_id)
    body = await _sync(client, b_token, since=since)
    room = body["rooms"]["join"][room_id]
    all_types = {e["type"] for e in room["state"]["events"] + room["timeline"]["events"]}
    assert {"m.room.create", "m.room.name", "m.room.join_rules", "m.room.power_levels"} <= all_types


async def test_leave_and_rejected_invite_in_leave_section(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    public = await _room(client, a_token, preset="public_chat")
    private = await _room(client, a_token, invite=[bob])
    await _join(client, b_token, public)
    since = (await _sync(client, b_token))["next_batch"]
    for room_id in (public, private):
        r = await client.post(
            f"/_matrix/client/v3/rooms/{room_id}/leave", json={}, headers=auth_header(b_token)
        )
        assert r.status_code == 200, r.text
    await _send(client, a_token, public, "after bob left")
    body = await _sync(client, b_token, since=since)
    left = body["rooms"]["leave"]
    assert set(left) == {public, private}
    bodies = [e["content"].get("body") for e in left[public]["timeline"]["events"]]
    assert "after bob left" not in bodies
    # Initial syncs leave left rooms out unless the filter asks for them.
    assert "leave" not in (await _sync(client, b_token)).get("rooms", {})
    included = await _sync(client, b_token, filter='{"room":{"include_leave":true}}')
    assert public in included["rooms"]["leave"]


async def test_filters_inline_and_stored(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token)
    await _send(client, token, room_id, "hello")
    body = await _sync(client, token, filter='{"room":{"timeline":{"types":["m.room.message"]}}}')
    types = {e["type"] for e in body["rooms"]["join"][room_id]["timeline"]["events"]}
    assert types == {"m.room.message"}
    r = await client.post(
        f"/_matrix/client/v3/user/{alice}/filter",
        headers=auth_header(token),
        json={"room": {"timeline": {"not_types": ["m.room.*"]}}},
    )
    assert r.status_code == 200, r.text
    body = await _sync(client, token, filter=r.json()["filter_id"])
    assert room_id not in body.get("rooms", {}).get("join", {}) or not [
        e
        for e in body["rooms"]["join"][room_id]["timeline"]["events"]
        if e["type"].startswith("m.room.")
    ]
    excluded = await _sync(client, token, filter=f'{{"room":{{"not_rooms":["{room_id}"]}}}}')
    assert room_id not in excluded.get("rooms", {}).get("join", {})


async def test_a_timeline_limit_of_zero_gives_state_and_no_timeline(
    client: httpx.AsyncClient,
) -> None:
    """``limit: 0`` (the filter API takes it): no timeline events, the room's state in
    ``state`` (here only its members, by the state filter), and a limited timeline whose
    ``prev_batch`` pages back to the room's events."""
    _, token = await register(client, "alice")
    room_id = await _room(client, token)
    await _send(client, token, room_id, "hello")
    members_only = '{"room":{"state":{"types":["m.room.member"]},"timeline":{"limit":0}}}'
    room = (await _sync(client, token, filter=members_only))["rooms"]["join"][room_id]
    assert room["timeline"]["events"] == [] and room["timeline"]["limited"] is True
    assert [e["type"] for e in room["state"]["events"]] == ["m.room.member"]
    r = await client.get(
        f"/_matrix/client/v3/rooms/{room_id}/messages",
        params={"dir": "b", "from": room["timeline"]["prev_batch"], "limit": 1},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    assert r.json()["chunk"][0]["content"]["body"] == "hello"


async def test_lazy_loading_members(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    users = [await register(client, f"user{i}") for i in range(4)]
    room_id = await _room(client, a_token, preset="public_chat")
    for _, token in users:
        await _join(client, token, room_id)
    for i in range(12):
        await _send(client, a_token, room_id, f"x{i}")
    talker, talker_token = users[0]
    await _send(client, talker_token, room_id, "from user0")
    body = await _sync(
        client,
        a_token,
        filter='{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":3}}}',
    )
    room = body["rooms"]["join"][room_id]
    members = {e["state_key"] for e in room["state"]["events"] if e["type"] == "m.room.member"}
    assert talker in members
    assert members <= {
        talker,
        body["rooms"]["join"][room_id]["timeline"]["events"][0]["sender"],
        "@alice:test",
    }
    assert room["summary"]["m.joined_member_count"] == 5


async def test_full_state(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room_id = await _room(client, token, name="N")
    since = (await _sync(client, token))["next_batch"]
    body = await _sync(client, token, since=since, full_state="true")
    room = body["rooms"]["join"][room_id]
    types = {e["type"] for e in room["state"]["events"] + room["timeline"]["events"]}
    assert "m.room.name" in types


async def test_bad_inputs(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    cases = [
        ({"since": "garbage"}, 400, "M_INVALID_PARAM"),
        ({"timeout": "soon"}, 400, "M_INVALID_PARAM"),
        ({"timeout": "-1"}, 400, "M_INVALID_PARAM"),
        ({"set_presence": "busy"}, 400, "M_INVALID_PARAM"),
        ({"full_state": "maybe"}, 400, "M_INVALID_PARAM"),
        ({"filter": "{not json"}, 400, "M_BAD_JSON"),
        ({"filter": "12345"}, 404, "M_NOT_FOUND"),
    ]
    for params, status, errcode in cases:
        r = await client.get(SYNC, params=params, headers=auth_header(token))
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), params
    r = await client.get(SYNC)
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await client.get(SYNC, headers=auth_header("nope"))
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert r.json()["soft_logout"] is False


async def test_heroes_only_for_rooms_without_a_name_or_alias(client: httpx.AsyncClient) -> None:
    """spec, room summary: ``m.heroes`` is required when the room has no name and no
    canonical alias; a named room's summary is its counts alone."""
    _, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    named = await _room(client, token, preset="public_chat", name="Kitchen")
    aliased = await _room(client, token, preset="public_chat", room_alias_name="hall")
    plain = await _room(client, token, preset="public_chat")
    for room_id in (named, aliased, plain):
        await _join(client, bob_token, room_id)
    rooms = (await _sync(client, token))["rooms"]["join"]
    counts = {"m.joined_member_count": 2, "m.invited_member_count": 0}
    assert rooms[named]["summary"] == counts
    assert rooms[aliased]["summary"] == counts
    assert rooms[plain]["summary"] == {**counts, "m.heroes": [bob]}
