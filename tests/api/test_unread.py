"""Unread counts in sync: others' messages after the user's read mark, cleared by receipts."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

SYNC = "/_matrix/client/v3/sync"
CS = "/_matrix/client/v3"


async def _sync(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    params.setdefault("set_presence", "offline")
    r = await client.get(SYNC, params={k: str(v) for k, v in params.items()},
                         headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


async def _unread(client: httpx.AsyncClient, token: str, room_id: str) -> int:
    body = await _sync(client, token)
    counts = body["rooms"]["join"][room_id]["unread_notifications"]
    assert counts["highlight_count"] == 0
    count: int = counts["notification_count"]
    return count


async def _send(client: httpx.AsyncClient, token: str, room_id: str, text: str,
                event_type: str = "m.room.message") -> str:
    r = await client.put(f"{CS}/rooms/{room_id}/send/{event_type}/{text}",
                         json={"msgtype": "m.text", "body": text}, headers=auth_header(token))
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def _receipt(client: httpx.AsyncClient, token: str, room_id: str, receipt_type: str,
                   event_id: str, body: dict[str, Any] | None = None) -> None:
    r = await client.post(f"{CS}/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
                          json=body or {}, headers=auth_header(token))
    assert r.status_code == 200, r.text


async def _room(client: httpx.AsyncClient, a_token: str, b_token: str) -> str:
    r = await client.post(f"{CS}/createRoom", json={"preset": "public_chat"},
                          headers=auth_header(a_token))
    room_id = str(r.json()["room_id"])
    r = await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(b_token))
    assert r.status_code == 200, r.text
    return room_id


async def test_counts_follow_receipts(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    room_id = await _room(client, a_token, b_token)
    assert await _unread(client, a_token, room_id) == 0
    ids = [await _send(client, b_token, room_id, f"m{i}") for i in range(3)]
    # What does not count: state, other types, one's own messages, stickers (the spec's
    # default push rules notify for m.room.message and m.room.encrypted, not m.sticker).
    r = await client.put(f"{CS}/profile/{bob}/displayname", json={"displayname": "Bob"},
                         headers=auth_header(b_token))  # a new m.room.member in the room
    assert r.status_code == 200, r.text
    await _send(client, b_token, room_id, "reaction", "m.reaction")
    await _send(client, b_token, room_id, "sticker", "m.sticker")
    await _send(client, b_token, room_id, "secret", "m.room.encrypted")
    assert await _unread(client, a_token, room_id) == 4
    assert await _unread(client, b_token, room_id) == 0

    await _receipt(client, a_token, room_id, "m.read", ids[1])
    assert await _unread(client, a_token, room_id) == 2
    # A threaded receipt in the main timeline counts; a later private one wins.
    await _receipt(client, a_token, room_id, "m.read", ids[2], {"thread_id": "main"})
    assert await _unread(client, a_token, room_id) == 1
    last = await _send(client, b_token, room_id, "m4")
    await _receipt(client, a_token, room_id, "m.read.private", last)
    assert await _unread(client, a_token, room_id) == 0
    # A public receipt behind the private one does not bring the count back.
    await _receipt(client, a_token, room_id, "m.read", ids[2])
    assert await _unread(client, a_token, room_id) == 0


async def test_sending_marks_the_room_read(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    room_id = await _room(client, a_token, b_token)
    await _send(client, b_token, room_id, "hi")
    await _send(client, b_token, room_id, "there")
    assert await _unread(client, a_token, room_id) == 2
    await _send(client, a_token, room_id, "hello")
    assert await _unread(client, a_token, room_id) == 0
    await _send(client, b_token, room_id, "again")
    assert await _unread(client, a_token, room_id) == 1


async def test_counts_per_room_in_one_sync(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    rooms = [await _room(client, a_token, b_token) for _ in range(3)]
    for n, room_id in enumerate(rooms):
        for i in range(n):
            await _send(client, b_token, room_id, f"r{n}m{i}")
    body = await _sync(client, a_token)
    assert [body["rooms"]["join"][r]["unread_notifications"]["notification_count"]
            for r in rooms] == [0, 1, 2]


async def test_receipt_updates_the_count_of_a_waiting_sync(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    room_id = await _room(client, a_token, b_token)
    event_id = await _send(client, b_token, room_id, "hi")
    since = (await _sync(client, a_token))["next_batch"]
    waiting = asyncio.create_task(_sync(client, a_token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    # A private receipt wakes its owner, whose count drops to zero.
    await _receipt(client, a_token, room_id, "m.read.private", event_id)
    body = await asyncio.wait_for(waiting, 10)
    assert body["rooms"]["join"][room_id]["unread_notifications"] == {
        "notification_count": 0, "highlight_count": 0}
