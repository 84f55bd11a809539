"""Unread counts in sync: others' messages after the user's read mark, cleared by receipts."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import orjson
import pytest

from homeserver.app import Homeserver
from homeserver.core.streams import Stream, StreamToken
from homeserver.storage.push import PushStore
from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

SYNC = "/_matrix/client/v3/sync"
CS = "/_matrix/client/v3"


async def _sync(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    params.setdefault("set_presence", "offline")
    r = await client.get(
        SYNC, params={k: str(v) for k, v in params.items()}, headers=auth_header(token)
    )
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


async def _send(
    client: httpx.AsyncClient,
    token: str,
    room_id: str,
    text: str,
    event_type: str = "m.room.message",
) -> str:
    r = await client.put(
        f"{CS}/rooms/{room_id}/send/{event_type}/{text}",
        json={"msgtype": "m.text", "body": text},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def _receipt(
    client: httpx.AsyncClient,
    token: str,
    room_id: str,
    receipt_type: str,
    event_id: str,
    body: dict[str, Any] | None = None,
) -> None:
    r = await client.post(
        f"{CS}/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
        json=body or {},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text


async def _room(client: httpx.AsyncClient, a_token: str, b_token: str) -> str:
    r = await client.post(
        f"{CS}/createRoom", json={"preset": "public_chat"}, headers=auth_header(a_token)
    )
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
    r = await client.put(
        f"{CS}/profile/{bob}/displayname", json={"displayname": "Bob"}, headers=auth_header(b_token)
    )  # a new m.room.member in the room
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
    assert [
        body["rooms"]["join"][r]["unread_notifications"]["notification_count"] for r in rooms
    ] == [0, 1, 2]


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
        "notification_count": 0,
        "highlight_count": 0,
    }


async def test_kept_counts_equal_counts_from_scratch(
    hs: Homeserver, client: httpx.AsyncClient
) -> None:
    """Syncs keep each user's counts and move them on; after every step of a random mix of
    messages, mentions, thread replies, receipts of each kind and the user's own messages,
    in two rooms, a sync's counts equal a count from scratch at its positions."""
    alice, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    rooms = [await _room(client, a_token, b_token) for _ in range(2)]
    roots = {
        room_id: await _send(client, b_token, room_id, f"root-{n}")
        for n, room_id in enumerate(rooms)
    }
    seen: dict[str, list[str]] = {room_id: [] for room_id in rooms}  # main timeline
    in_thread: dict[str, list[str]] = {room_id: [root] for room_id, root in roots.items()}
    store = PushStore(hs.db)
    threads_filter = orjson.dumps(
        {"room": {"timeline": {"unread_thread_notifications": True}}}
    ).decode()
    rng = random.Random(8)
    since: str | None = None
    checked = 0
    for step in range(40):
        room_id = rng.choice(rooms)
        root = roots[room_id]
        action = rng.choice(
            ["message", "message", "mention", "reply", "read", "read_thread", "read_private", "own"]
        )
        content: dict[str, Any] = {"msgtype": "m.text", "body": f"s{step}"}
        token = b_token
        if action == "mention":
            content["m.mentions"] = {"user_ids": [alice]}
        elif action == "reply":
            content["m.relates_to"] = {"rel_type": "m.thread", "event_id": root}
        elif action == "own":
            token = a_token
        if action.startswith("read"):
            if not seen[room_id]:
                continue
            if action == "read_thread":  # in the thread, or a threaded one in "main"
                thread_id = rng.choice([root, "main"])
                targets = in_thread[room_id] if thread_id == root else seen[room_id]
                await _receipt(
                    client,
                    a_token,
                    room_id,
                    "m.read",
                    rng.choice(targets),
                    {"thread_id": thread_id},
                )
            else:
                await _receipt(
                    client,
                    a_token,
                    room_id,
                    "m.read.private" if action == "read_private" else "m.read",
                    rng.choice(seen[room_id]),
                )
        else:
            r = await client.put(
                f"{CS}/rooms/{room_id}/send/m.room.message/t{step}",
                json=content,
                headers=auth_header(token),
            )
            assert r.status_code == 200, r.text
            (in_thread if action == "reply" else seen)[room_id].append(r.json()["event_id"])
        # Incremental syncs mostly (woken syncs move kept counts on), sometimes from scratch.
        params: dict[str, Any] = {"filter": threads_filter}
        if since is not None and step % 5:
            params["since"] = since
        body = await _sync(client, a_token, **params)
        since = body["next_batch"]
        upto = StreamToken.parse(since).get(Stream.EVENTS)
        joined = body.get("rooms", {}).get("join", {})
        truth = await store.count_unread(alice, list(joined), upto=upto)
        for synced_room, entry in joined.items():
            expected = truth.get(synced_room, {})
            main = expected.get("main")
            assert entry["unread_notifications"] == (
                {"notification_count": main.notifications, "highlight_count": main.highlights}
                if main
                else {"notification_count": 0, "highlight_count": 0}
            ), (step, action)
            assert entry.get("unread_thread_notifications", {}) == {
                thread_id: {"notification_count": t.notifications, "highlight_count": t.highlights}
                for thread_id, t in expected.items()
                if thread_id != "main"
            }, (step, action)
            checked += 1
    assert checked >= 30


async def test_members_woken_together_without_kept_counts(client: httpx.AsyncClient) -> None:
    """Members of a room who came without rooms (nothing kept of their counts), woken
    together by one message, each get their counts."""
    tokens = [(await register(client, name))[1] for name in ("alice", "bob", "carol", "dan")]
    room_id = await _room(client, tokens[0], tokens[1])
    for token in tokens[2:]:
        r = await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(token))
        assert r.status_code == 200, r.text
    await _send(client, tokens[1], room_id, "before")
    no_rooms = orjson.dumps({"room": {"rooms": []}}).decode()
    since = [(await _sync(client, token, filter=no_rooms))["next_batch"] for token in tokens]
    waiting = [
        asyncio.create_task(_sync(client, token, since=s, timeout=30_000))
        for token, s in zip(tokens, since, strict=True)
    ]
    await asyncio.sleep(0.2)
    await _send(client, tokens[0], room_id, "hello")
    bodies = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert [
        b["rooms"]["join"][room_id]["unread_notifications"]["notification_count"] for b in bodies
    ] == [0, 1, 2, 2]


async def test_a_waiting_long_poll_has_its_counts_ready(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts nobody kept yet (a first sync that left the rooms out) are counted while the
    long-poll waits, not once a message wakes it: only the sender, whose own event moved
    its read mark, counts again."""
    tokens = [(await register(client, name))[1] for name in ("alice", "bob", "carol")]
    room_id = await _room(client, tokens[0], tokens[1])
    r = await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(tokens[2]))
    assert r.status_code == 200, r.text
    no_rooms = orjson.dumps({"room": {"rooms": []}}).decode()
    since = [(await _sync(client, token, filter=no_rooms))["next_batch"] for token in tokens]
    counted: list[list[str]] = []
    count_unread_of = PushStore.count_unread_of

    async def counting(store: PushStore, user_ids: Any, *args: Any, **kwargs: Any) -> Any:
        counted.append(sorted(user_ids))
        return await count_unread_of(store, user_ids, *args, **kwargs)

    monkeypatch.setattr(PushStore, "count_unread_of", counting)
    waiting = [
        asyncio.create_task(_sync(client, token, since=s, timeout=30_000))
        for token, s in zip(tokens, since, strict=True)
    ]
    await asyncio.sleep(0.2)
    assert sorted(u for users in counted for u in users) == [
        "@alice:test",
        "@bob:test",
        "@carol:test",
    ]
    counted.clear()
    await _send(client, tokens[0], room_id, "hello")
    bodies = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert [
        b["rooms"]["join"][room_id]["unread_notifications"]["notification_count"] for b in bodies
    ] == [0, 1, 1]
    assert counted == [["@alice:test"]]
