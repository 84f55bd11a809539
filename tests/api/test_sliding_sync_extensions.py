"""Sliding sync extensions: to_device, e2ee, account_data, receipts, typing, and scoping."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.api.e2ee_helpers import create_room as e2ee_room
from tests.api.e2ee_helpers import join, new_device, upload
from tests.api.sliding_helpers import post, put, room_list, send, sliding
from tests.helpers import create_room, register


async def test_to_device_with_since(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    ext = {"to_device": {"enabled": True}}
    first = await sliding(client, alice.token, {"extensions": ext})
    assert first["extensions"]["to_device"]["events"] == []
    since = first["extensions"]["to_device"]["next_batch"]
    for txn in ("1", "2"):
        await put(
            client,
            bob.token,
            f"/sendToDevice/m.test/{txn}",
            {"messages": {alice.user_id: {alice.device_id: {"n": txn}}}},
        )
    ext = {"to_device": {"enabled": True, "since": since, "limit": 1}}
    second = await sliding(client, alice.token, {"extensions": ext}, pos=first["pos"])
    got = second["extensions"]["to_device"]
    assert [e["content"] for e in got["events"]] == [{"n": "1"}]
    assert got["events"][0]["sender"] == bob.user_id
    # Retrying with the old since gives the same message; the new one acknowledges it.
    again = await sliding(client, alice.token, {"extensions": ext}, pos=first["pos"])
    assert [e["content"] for e in again["extensions"]["to_device"]["events"]] == [{"n": "1"}]
    ext = {"to_device": {"enabled": True, "since": again["extensions"]["to_device"]["next_batch"]}}
    third = await sliding(client, alice.token, {"extensions": ext}, pos=second["pos"])
    assert [e["content"] for e in third["extensions"]["to_device"]["events"]] == [{"n": "2"}]


async def test_to_device_wakes_a_long_poll(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    ext = {"to_device": {"enabled": True}}
    first = await sliding(client, alice.token, {"extensions": ext})
    ext = {"to_device": {"enabled": True, "since": first["extensions"]["to_device"]["next_batch"]}}
    waiting = asyncio.create_task(
        sliding(client, alice.token, {"extensions": ext}, pos=first["pos"], timeout=30_000)
    )
    await asyncio.sleep(0.2)
    await put(
        client,
        bob.token,
        "/sendToDevice/m.test/1",
        {"messages": {alice.user_id: {alice.device_id: {"x": 1}}}},
    )
    body = await asyncio.wait_for(waiting, 10)
    assert body["extensions"]["to_device"]["events"][0]["content"] == {"x": 1}


async def test_e2ee_counts_and_device_lists(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    room = await e2ee_room(client, alice, invite=[bob.user_id])
    await join(client, bob, room)
    await upload(client, alice, {"one_time_keys": alice.one_time_keys(3)})
    ext = {"e2ee": {"enabled": True}}
    first = await sliding(client, alice.token, {"extensions": ext})
    e2ee = first["extensions"]["e2ee"]
    assert e2ee["device_one_time_keys_count"]["signed_curve25519"] == 3
    assert e2ee["device_unused_fallback_key_types"] == []
    assert "device_lists" not in e2ee
    await upload(client, bob, {"device_keys": bob.device_keys()})
    second = await sliding(client, alice.token, {"extensions": ext}, pos=first["pos"], timeout=1000)
    assert second["extensions"]["e2ee"]["device_lists"] == {"changed": [bob.user_id], "left": []}


async def test_account_data_global_and_rooms_with_scoping(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    shown = await create_room(client, token)
    hidden = await create_room(client, token)
    await send(client, token, shown, "top")  # shown is first in the window of one
    await put(client, token, f"/user/{alice}/account_data/org.example.global", {"a": 1})
    for room in (shown, hidden):
        await put(
            client, token, f"/user/{alice}/rooms/{room}/account_data/org.example.r", {"r": room}
        )
    request: dict[str, Any] = {
        "lists": {"top": room_list([[0, 0]])},
        "extensions": {"account_data": {"enabled": True}},
    }
    first = await sliding(client, token, request)
    data = first["extensions"]["account_data"]
    global_types = {e["type"] for e in data["global"]}
    assert {"org.example.global", "m.push_rules"} <= global_types
    assert list(data["rooms"]) == [shown]
    assert data["rooms"][shown] == [{"type": "org.example.r", "content": {"r": shown}}]
    await put(client, token, f"/user/{alice}/account_data/org.example.global", {"a": 2})
    second = await sliding(client, token, request, pos=first["pos"])
    assert second["extensions"]["account_data"] == {
        "global": [{"type": "org.example.global", "content": {"a": 2}}],
        "rooms": {},
    }
    # Scoped to no list: no room's account data.
    request["extensions"]["account_data"]["lists"] = []
    scoped = await sliding(client, token, request)
    assert scoped["extensions"]["account_data"]["rooms"] == {}


async def test_receipts_and_typing(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, alice_token, invite=[bob])
    other = await create_room(client, alice_token)
    await post(client, bob_token, f"/join/{room}", {})
    event_id = await send(client, alice_token, room, "read me")
    request = {
        "lists": {"all": room_list()},
        "room_subscriptions": {},
        "extensions": {"receipts": {"enabled": True}, "typing": {"enabled": True}},
    }
    first = await sliding(client, alice_token, request)
    assert first["extensions"]["typing"] == {"rooms": {}}
    await post(client, bob_token, f"/rooms/{room}/receipt/m.read/{event_id}", {})
    await put(client, bob_token, f"/rooms/{room}/typing/{bob}", {"typing": True, "timeout": 30000})
    second = await sliding(client, alice_token, request, pos=first["pos"])
    receipt = second["extensions"]["receipts"]["rooms"][room]
    assert receipt["type"] == "m.receipt"
    assert bob in receipt["content"][event_id]["m.read"]
    assert second["extensions"]["typing"]["rooms"] == {
        room: {"type": "m.typing", "content": {"user_ids": [bob]}}
    }
    assert other not in second["extensions"]["receipts"]["rooms"]
    # Scoped to a room subscription only: the list's rooms are left out.
    scoped = {
        "lists": {"all": room_list()},
        "room_subscriptions": {other: {"timeline_limit": 0, "required_state": []}},
        "extensions": {"typing": {"enabled": True, "lists": [], "rooms": [other]}},
    }
    body = await sliding(client, alice_token, scoped)
    assert body["extensions"]["typing"] == {"rooms": {}}


async def test_typing_wakes_a_long_poll(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, alice_token, invite=[bob])
    await post(client, bob_token, f"/join/{room}", {})
    request = {"lists": {"all": room_list()}, "extensions": {"typing": {"enabled": True}}}
    first = await sliding(client, alice_token, request)
    waiting = asyncio.create_task(
        sliding(client, alice_token, request, pos=first["pos"], timeout=30_000)
    )
    await asyncio.sleep(0.2)
    await put(client, bob_token, f"/rooms/{room}/typing/{bob}", {"typing": True, "timeout": 30000})
    body = await asyncio.wait_for(waiting, 10)
    assert body["extensions"]["typing"]["rooms"][room]["content"]["user_ids"] == [bob]
    assert body["rooms"] == {}


async def test_receipts_of_a_room_sent_from_scratch_follow_its_timeline(
    client: httpx.AsyncClient,
) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    carol, carol_token = await register(client, "carol")
    room = await create_room(client, alice_token, invite=[bob, carol])
    await post(client, bob_token, f"/join/{room}", {})
    await post(client, carol_token, f"/join/{room}", {})
    old = await send(client, alice_token, room, "old")
    mine = await send(client, bob_token, room, "middle")
    newest = await send(client, bob_token, room, "newest")
    await post(client, bob_token, f"/rooms/{room}/receipt/m.read/{old}", {})
    await post(client, alice_token, f"/rooms/{room}/receipt/m.read/{mine}", {})
    await post(client, carol_token, f"/rooms/{room}/receipt/m.read/{newest}", {})
    await post(client, bob_token, f"/rooms/{room}/receipt/m.read.private/{newest}", {})
    request = {
        "lists": {"all": room_list(timeline_limit=1)},
        "extensions": {"receipts": {"enabled": True}},
    }
    body = await sliding(client, alice_token, request)
    content = body["extensions"]["receipts"]["rooms"][room]["content"]
    # The timeline holds ``newest`` only: its receipts, and alice's own elsewhere; bob's
    # on an event not sent is left out, and his private receipt is his alone.
    assert set(content) == {newest, mine}
    assert set(content[newest]) == {"m.read"}
    assert set(content[newest]["m.read"]) == {carol}
    assert set(content[mine]["m.read"]) == {alice}
    # Incrementally, every receipt that moved is sent, on whatever event.
    await post(client, bob_token, f"/rooms/{room}/receipt/m.read/{mine}", {})
    second = await sliding(client, alice_token, request, pos=body["pos"])
    moved = second["extensions"]["receipts"]["rooms"][room]["content"]
    assert set(moved[mine]["m.read"]) == {bob}
