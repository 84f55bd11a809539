"""Sending events and reading them back: /send, /state, /event, unsigned data."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.helpers import auth_header, checked, login, register
from tests.helpers import create_room as create

V3 = "/_matrix/client/v3"


async def send(
    client: httpx.AsyncClient,
    token: str,
    room_id: str,
    txn: str,
    content: Any,
    event_type: str = "m.room.message",
) -> httpx.Response:
    return await client.put(
        f"{V3}/rooms/{room_id}/send/{event_type}/{txn}", headers=auth_header(token), json=content
    )


async def get_event(
    client: httpx.AsyncClient, token: str, room_id: str, event_id: str
) -> dict[str, Any]:
    r = await client.get(f"{V3}/rooms/{room_id}/event/{event_id}", headers=auth_header(token))
    body: dict[str, Any] = checked(r)
    return body


MESSAGE = {"msgtype": "m.text", "body": "hello"}


async def test_send_is_idempotent_per_device(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    room_id = await create(client, tok)
    other = await create(client, tok)
    first = checked(await send(client, tok, room_id, "t1", MESSAGE))["event_id"]
    # The same transaction again: the same event, even with another body.
    again = checked(await send(client, tok, room_id, "t1", {"body": "different"}))["event_id"]
    assert again == first
    # A new transaction ID, another room or another device: a new event.
    second = checked(await send(client, tok, room_id, "t2", MESSAGE))["event_id"]
    in_other = checked(await send(client, tok, other, "t1", MESSAGE))["event_id"]
    device2 = await login(client, "alice")
    from_device2 = checked(await send(client, device2["access_token"], room_id, "t1", MESSAGE))[
        "event_id"
    ]
    assert len({first, second, in_other, from_device2}) == 4
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages", params={"limit": "10"}, headers=auth_header(tok)
    )
    bodies = [
        e["content"].get("body") for e in checked(r)["chunk"] if e["type"] == "m.room.message"
    ]
    assert bodies == ["hello", "hello", "hello"]  # the "different" retry made nothing
    event = await get_event(client, tok, room_id, first)
    assert event["content"] == MESSAGE
    assert event["sender"] == alice
    assert event["type"] == "m.room.message"
    assert event["room_id"] == room_id


async def test_a_retry_is_answered_even_when_it_would_be_refused_now(
    client: httpx.AsyncClient,
) -> None:
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    first = checked(await send(client, tok, room_id, "t1", MESSAGE))["event_id"]
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "+1"}}
    reacted = checked(await send(client, tok, room_id, "t2", reaction, event_type="m.reaction"))[
        "event_id"
    ]
    # The same reaction under a new transaction ID is a duplicate; under its own, the answer.
    r = await send(client, tok, room_id, "t3", reaction, event_type="m.reaction")
    assert r.status_code == 400, r.text
    assert (
        checked(await send(client, tok, room_id, "t2", reaction, event_type="m.reaction"))[
            "event_id"
        ]
        == reacted
    )
    checked(await client.post(f"{V3}/rooms/{room_id}/leave", json={}, headers=auth_header(tok)))
    # Gone from the room: a retry still gets its event, a new message is refused.
    assert checked(await send(client, tok, room_id, "t1", MESSAGE))["event_id"] == first
    r = await send(client, tok, room_id, "t4", MESSAGE)
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN"


async def test_concurrent_retries_of_one_transaction(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    responses = await asyncio.gather(
        *(send(client, tok, room_id, "same", MESSAGE) for _ in range(4))
    )
    assert len({checked(r)["event_id"] for r in responses}) == 1
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages", params={"limit": "50"}, headers=auth_header(tok)
    )
    assert len([e for e in checked(r)["chunk"] if e["type"] == "m.room.message"]) == 1


async def test_transaction_id_only_for_the_sending_device(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat")
    checked(await client.post(f"{V3}/rooms/{room_id}/join", headers=auth_header(b_tok), json={}))
    event_id = checked(await send(client, tok, room_id, "txn-42", MESSAGE))["event_id"]
    event = await get_event(client, tok, room_id, event_id)
    assert event["unsigned"]["transaction_id"] == "txn-42"
    device2 = await login(client, "alice")
    event = await get_event(client, device2["access_token"], room_id, event_id)
    assert "transaction_id" not in event["unsigned"]
    event = await get_event(client, b_tok, room_id, event_id)
    assert "transaction_id" not in event["unsigned"]
    # The same holds in /sync and /messages.
    r = await client.get(f"{V3}/sync", headers=auth_header(tok))
    timeline = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
    mine = [e for e in timeline if e["event_id"] == event_id][0]
    assert mine["unsigned"]["transaction_id"] == "txn-42"
    r = await client.get(f"{V3}/sync", headers=auth_header(device2["access_token"]))
    timeline = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
    assert "transaction_id" not in [e for e in timeline if e["event_id"] == event_id][0]["unsigned"]
    r = await client.get(f"{V3}/rooms/{room_id}/messages", headers=auth_header(tok))
    mine = [e for e in checked(r)["chunk"] if e["event_id"] == event_id][0]
    assert mine["unsigned"]["transaction_id"] == "txn-42"


async def test_send_refusals(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat")
    # Memberships go through their own endpoints.
    r = await send(client, tok, room_id, "m1", {"membership": "join"}, "m.room.member")
    checked(r, 403, "M_FORBIDDEN", documented=False)
    # Not joined: no sending; nor into an unknown room.
    checked(await send(client, b_tok, room_id, "n1", MESSAGE), 403, "M_FORBIDDEN", documented=False)
    checked(
        await send(client, b_tok, "!nowhere:test", "n2", MESSAGE),
        403,
        "M_FORBIDDEN",
        documented=False,
    )
    # Larger than 65 536 bytes as a PDU.
    big = {"msgtype": "m.text", "body": "x" * 65_536}
    checked(await send(client, tok, room_id, "big", big), 413, "M_TOO_LARGE", documented=False)
    # Just below the limit once signed and hashed: accepted.
    fits = {"msgtype": "m.text", "body": "x" * 64_000}
    checked(await send(client, tok, room_id, "fits", fits))
    # Floats and out-of-range integers are not canonical JSON.
    checked(await send(client, tok, room_id, "f1", {"body": "x", "n": 1.5}), 400, "M_BAD_JSON")
    checked(
        await send(client, tok, room_id, "f2", {"body": "x", "n": {"deep": [0.5]}}),
        400,
        "M_BAD_JSON",
    )
    checked(await send(client, tok, room_id, "f3", {"n": 2**53}), 400, "M_BAD_JSON")
    checked(await send(client, tok, room_id, "nj", [1]), 400, "M_BAD_JSON")
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/raw",
        headers=auth_header(tok),
        content=b"{not json",
    )
    checked(r, 400, "M_NOT_JSON")
    r = await client.put(f"{V3}/rooms/{room_id}/send/m.room.message/noauth", json=MESSAGE)
    checked(r, 401, "M_MISSING_TOKEN", documented=False)
    # None of the refused sends reached the room.
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages", params={"limit": "50"}, headers=auth_header(tok)
    )
    messages = [e for e in checked(r)["chunk"] if e["type"] == "m.room.message"]
    assert len(messages) == 1 and messages[0]["sender"] == alice


async def test_power_levels_enforced(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(
        client,
        tok,
        preset="public_chat",
        room_version="11",
        power_level_content_override={
            "events_default": 10,
            "users": {alice: 100, bob: 5},
            "events": {"m.room.name": 50, "m.room.power_levels": 100, "org.example.low": 0},
        },
    )
    checked(await client.post(f"{V3}/rooms/{room_id}/join", headers=auth_header(b_tok), json={}))
    # Below events_default (10).
    checked(await send(client, b_tok, room_id, "b1", MESSAGE), 403, "M_FORBIDDEN", documented=False)
    # A type with its own lower level.
    checked(await send(client, b_tok, room_id, "b2", {"x": 1}, "org.example.low"))
    # Below state_default (50) and the name's level (50).
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/org.example.state/k", headers=auth_header(b_tok), json={"x": 1}
    )
    checked(r, 403, "M_FORBIDDEN")
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.name/",
        headers=auth_header(b_tok),
        json={"name": "bob's"},
    )
    checked(r, 403, "M_FORBIDDEN")
    # Raising oneself is refused too.
    r = await client.get(
        f"{V3}/rooms/{room_id}/state/m.room.power_levels/", headers=auth_header(b_tok)
    )
    pl = checked(r)
    pl["users"][bob] = 100
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.power_levels/", headers=auth_header(b_tok), json=pl
    )
    checked(r, 403, "M_FORBIDDEN")
    # Once alice grants 10, bob can send messages.
    pl["users"][bob] = 10
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.power_levels/", headers=auth_header(tok), json=pl
    )
    checked(r)
    checked(await send(client, b_tok, room_id, "b3", MESSAGE))


async def test_state_round_trip(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    room_id = await create(client, tok, room_version="11")
    base = f"{V3}/rooms/{room_id}/state"
    # Empty state key, with and without the trailing slash.
    r = await client.put(f"{base}/m.room.topic/", headers=auth_header(tok), json={"topic": "one"})
    first = checked(r)["event_id"]
    r = await client.get(f"{base}/m.room.topic", headers=auth_header(tok))
    assert r.status_code == 200 and r.json() == {"topic": "one"}
    r = await client.get(f"{base}/m.room.topic/", headers=auth_header(tok))
    assert checked(r) == {"topic": "one"}
    r = await client.put(f"{base}/m.room.topic", headers=auth_header(tok), json={"topic": "two"})
    assert r.status_code == 200, r.text
    second = r.json()["event_id"]
    assert second != first
    r = await client.get(
        f"{base}/m.room.topic/", headers=auth_header(tok), params={"format": "event"}
    )
    assert r.status_code == 200, r.text
    event = r.json()
    assert event["event_id"] == second
    assert event["state_key"] == "" and event["type"] == "m.room.topic"
    assert event["sender"] == alice and event["room_id"] == room_id
    assert event["content"] == {"topic": "two"}
    # The replaced state is in unsigned.
    assert event["unsigned"]["prev_content"] == {"topic": "one"}
    assert event["unsigned"]["replaces_state"] == first
    assert event["unsigned"]["prev_sender"] == alice
    r = await client.get(
        f"{base}/m.room.topic/", headers=auth_header(tok), params={"format": "content"}
    )
    assert checked(r) == {"topic": "two"}
    # The same content again makes no new event.
    r = await client.put(f"{base}/m.room.topic/", headers=auth_header(tok), json={"topic": "two"})
    assert checked(r)["event_id"] == second
    # /event shows the same unsigned data.
    event = await get_event(client, tok, room_id, second)
    assert event["unsigned"]["prev_content"] == {"topic": "one"}
    assert "prev_content" not in (await get_event(client, tok, room_id, first))["unsigned"]


async def test_state_keys(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    room_id = await create(client, tok)
    base = f"{V3}/rooms/{room_id}/state"
    # A state key with a slash, sent percent-encoded.
    r = await client.put(f"{base}/org.example.thing/a%2Fb", headers=auth_header(tok), json={"v": 1})
    checked(r)
    r = await client.get(f"{base}/org.example.thing/a%2Fb", headers=auth_header(tok))
    assert checked(r) == {"v": 1}
    r = await client.get(
        f"{base}/org.example.thing/a%2Fb", headers=auth_header(tok), params={"format": "event"}
    )
    assert r.json()["state_key"] == "a/b"
    # A state key with other reserved characters, and one's own user ID.
    r = await client.put(
        f"{base}/org.example.thing/x%3Atest%20%3F%23", headers=auth_header(tok), json={"v": 2}
    )
    checked(r)
    r = await client.put(
        f"{base}/org.example.thing/{alice}", headers=auth_header(tok), json={"v": 3}
    )
    checked(r)
    # Another user's ID is theirs alone (auth rules: state keys starting with '@').
    r = await client.put(
        f"{base}/org.example.thing/%40bob%3Atest", headers=auth_header(tok), json={"v": 4}
    )
    checked(r, 403, "M_FORBIDDEN")
    r = await client.get(f"{V3}/rooms/{room_id}/state", headers=auth_header(tok))
    keys = {e["state_key"] for e in checked(r) if e["type"] == "org.example.thing"}
    assert keys == {"a/b", "x:test ?#", alice}
    # Unknown state: 404.
    r = await client.get(f"{base}/org.example.thing/nope", headers=auth_header(tok))
    checked(r, 404, "M_NOT_FOUND", documented=False)
    r = await client.get(f"{base}/m.room.topic/", headers=auth_header(tok))
    checked(r, 404, "M_NOT_FOUND", documented=False)
    # Bad bodies.
    r = await client.put(f"{base}/org.example.thing/f", headers=auth_header(tok), json={"v": 0.5})
    checked(r, 400, "M_BAD_JSON")
    r = await client.put(f"{base}/org.example.thing/f", headers=auth_header(tok), json="x")
    checked(r, 400, "M_BAD_JSON")
    r = await client.put(
        f"{base}/m.room.member/%40bob%3Atest", headers=auth_header(tok), json={"membership": "join"}
    )
    checked(r, 403, "M_FORBIDDEN")
    r = await client.put(f"{base}/m.room.create/", headers=auth_header(tok), json={})
    checked(r, 403, "M_FORBIDDEN")


async def test_full_state(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat", name="Hall")
    checked(await client.post(f"{V3}/rooms/{room_id}/join", headers=auth_header(b_tok), json={}))
    r = await client.get(f"{V3}/rooms/{room_id}/state", headers=auth_header(b_tok))
    events = checked(r)
    keys = {(e["type"], e["state_key"]) for e in events}
    assert keys == {
        ("m.room.create", ""),
        ("m.room.member", alice),
        ("m.room.member", bob),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""),
        ("m.room.guest_access", ""),
        ("m.room.name", ""),
    }
    assert all(e["room_id"] == room_id and "event_id" in e for e in events)
    # bob leaves; the name changes; bob sees the state as of his leave.
    checked(await client.post(f"{V3}/rooms/{room_id}/leave", headers=auth_header(b_tok), json={}))
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.name/",
        headers=auth_header(tok),
        json={"name": "Renamed"},
    )
    checked(r)
    r = await client.get(f"{V3}/rooms/{room_id}/state", headers=auth_header(b_tok))
    names = [e["content"] for e in checked(r) if e["type"] == "m.room.name"]
    assert names == [{"name": "Hall"}]
    r = await client.get(f"{V3}/rooms/{room_id}/state/m.room.name/", headers=auth_header(b_tok))
    assert checked(r) == {"name": "Hall"}
    # A stranger sees nothing.
    _, c_tok = await register(client, "carol")
    r = await client.get(f"{V3}/rooms/{room_id}/state", headers=auth_header(c_tok))
    checked(r, 403, "M_FORBIDDEN", documented=False)
    r = await client.get(f"{V3}/rooms/{room_id}/state/m.room.name/", headers=auth_header(c_tok))
    checked(r, 403, "M_FORBIDDEN", documented=False)


async def test_world_readable_room(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    _, c_tok = await register(client, "carol")
    room_id = await create(
        client,
        tok,
        preset="public_chat",
        name="Open",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "content": {"history_visibility": "world_readable"},
            }
        ],
    )
    event_id = checked(await send(client, tok, room_id, "w1", MESSAGE))["event_id"]
    r = await client.get(f"{V3}/rooms/{room_id}/state/m.room.name/", headers=auth_header(c_tok))
    assert checked(r) == {"name": "Open"}
    assert (await get_event(client, c_tok, room_id, event_id))["content"] == MESSAGE
    # ... but reading is not sending.
    checked(await send(client, c_tok, room_id, "w2", MESSAGE), 403, "M_FORBIDDEN", documented=False)


async def test_get_event_not_found(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    room_a = await create(client, tok)
    room_b = await create(client, tok)
    in_b = checked(await send(client, tok, room_b, "x", MESSAGE))["event_id"]
    r = await client.get(f"{V3}/rooms/{room_a}/event/{in_b}", headers=auth_header(tok))
    checked(r, 404, "M_NOT_FOUND")
    r = await client.get(f"{V3}/rooms/{room_a}/event/$unknown", headers=auth_header(tok))
    checked(r, 404, "M_NOT_FOUND")
    # Someone outside the room cannot read its events.
    _, b_tok = await register(client, "bob")
    r = await client.get(f"{V3}/rooms/{room_b}/event/{in_b}", headers=auth_header(b_tok))
    assert r.status_code in (403, 404), r.text
    assert r.json()["errcode"] in ("M_FORBIDDEN", "M_NOT_FOUND")


async def test_send_without_a_transaction_id(client: httpx.AsyncClient) -> None:
    # POST /send/{eventType}: the form from before transaction IDs (Synapse serves it).
    _, tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat")
    url = f"{V3}/rooms/{room_id}/send/m.room.message"
    ids = []
    for _ in range(2):
        r = await client.post(url, headers=auth_header(tok), json=MESSAGE)
        assert r.status_code == 200, r.text
        ids.append(r.json()["event_id"])
    assert ids[0] != ids[1]  # no transaction: two requests, two events
    r = await client.get(f"{V3}/rooms/{room_id}/event/{ids[0]}", headers=auth_header(tok))
    assert checked(r)["content"] == MESSAGE
    for token, body, status, errcode in [
        (b_tok, MESSAGE, 403, "M_FORBIDDEN"),
        (tok, [1], 400, "M_BAD_JSON"),
        (tok, {"n": 1.5}, 400, "M_BAD_JSON"),
    ]:
        r = await client.post(url, headers=auth_header(token), json=body)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), body
    r = await client.post(url, json=MESSAGE)
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
