"""Counts from push actions (per room, per thread, cleared by receipts) and /notifications."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

CS = "/_matrix/client/v3"
THREADS_FILTER = '{"room": {"timeline": {"unread_thread_notifications": true}}}'


async def _sync(client: httpx.AsyncClient, token: str, **params: str) -> dict[str, Any]:
    r = await client.get(
        f"{CS}/sync", params={"set_presence": "offline", **params}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


async def _send(
    client: httpx.AsyncClient, token: str, room_id: str, txn: str, content: dict[str, Any]
) -> str:
    r = await client.put(
        f"{CS}/rooms/{room_id}/send/m.room.message/{txn}", json=content, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def _receipt(
    client: httpx.AsyncClient, token: str, room_id: str, event_id: str, thread_id: str | None = None
) -> None:
    body = {"thread_id": thread_id} if thread_id else {}
    r = await client.post(
        f"{CS}/rooms/{room_id}/receipt/m.read/{event_id}", json=body, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text


async def _setup(client: httpx.AsyncClient) -> tuple[str, str, str]:
    _, a = await register(client, "alice")
    _, b = await register(client, "bob")
    _, c = await register(client, "carol")
    r = await client.post(
        f"{CS}/createRoom", json={"preset": "public_chat"}, headers=auth_header(a)
    )
    room_id = str(r.json()["room_id"])
    for token in (b, c):
        r = await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(token))
        assert r.status_code == 200, r.text
    return a, b, room_id


def _text(body: str, **extra: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **extra}


def _in_thread(root: str, body: str, **extra: Any) -> dict[str, Any]:
    return _text(body, **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}}, **extra)


async def test_thread_counts_and_receipts(client: httpx.AsyncClient) -> None:
    a, b, room_id = await _setup(client)
    root = await _send(client, a, room_id, "root", _text("root"))
    t1 = await _send(client, a, room_id, "t1", _in_thread(root, "one"))
    await _send(client, a, room_id, "t2", _in_thread(root, "two @bob"))
    await _send(
        client,
        a,
        room_id,
        "t3",
        _in_thread(root, "three", **{"m.mentions": {"user_ids": ["@bob:test"]}}),
    )
    main = await _send(client, a, room_id, "m1", _text("main"))

    room = (await _sync(client, b))["rooms"]["join"][room_id]
    assert room["unread_notifications"] == {"notification_count": 5, "highlight_count": 1}
    assert "unread_thread_notifications" not in room
    room = (await _sync(client, b, filter=THREADS_FILTER))["rooms"]["join"][room_id]
    assert room["unread_notifications"] == {"notification_count": 2, "highlight_count": 0}
    assert room["unread_thread_notifications"] == {
        root: {"notification_count": 3, "highlight_count": 1}
    }

    # A receipt in the thread clears that thread up to it, not the main timeline.
    await _receipt(client, b, room_id, t1, thread_id=root)
    room = (await _sync(client, b, filter=THREADS_FILTER))["rooms"]["join"][room_id]
    assert room["unread_notifications"]["notification_count"] == 2
    assert room["unread_thread_notifications"][root]["notification_count"] == 2
    # "main" clears the main timeline only; an unthreaded receipt clears everything before.
    await _receipt(client, b, room_id, main, thread_id="main")
    room = (await _sync(client, b, filter=THREADS_FILTER))["rooms"]["join"][room_id]
    assert room["unread_notifications"]["notification_count"] == 0
    assert room["unread_thread_notifications"][root]["notification_count"] == 2
    await _receipt(client, b, room_id, main)
    room = (await _sync(client, b, filter=THREADS_FILTER))["rooms"]["join"][room_id]
    assert room["unread_notifications"] == {"notification_count": 0, "highlight_count": 0}
    assert "unread_thread_notifications" not in room


async def test_notifications_list(client: httpx.AsyncClient) -> None:
    a, b, room_id = await _setup(client)
    ids = [await _send(client, a, room_id, f"n{i}", _text(f"message {i}")) for i in range(5)]
    mention = await _send(
        client, a, room_id, "m", _text("hey", **{"m.mentions": {"user_ids": ["@bob:test"]}})
    )
    await _send(client, a, room_id, "quiet", {"msgtype": "m.notice", "body": "bot"})
    await _receipt(client, b, room_id, ids[1])

    async def page(**params: str) -> dict[str, Any]:
        r = await client.get(f"{CS}/notifications", params=params, headers=auth_header(b))
        assert r.status_code == 200, r.text
        assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
        body: dict[str, Any] = r.json()
        return body

    everything = await page()
    assert [n["event"]["event_id"] for n in everything["notifications"]] == [
        mention,
        *reversed(ids),
    ]
    assert "next_token" not in everything
    first = everything["notifications"][0]
    assert first["room_id"] == room_id and first["actions"][0] == "notify"
    assert first["event"]["content"]["body"] == "hey"
    assert [n["read"] for n in everything["notifications"]] == [
        False,
        False,
        False,
        False,
        True,
        True,
    ]
    one = await page(limit="2")
    assert len(one["notifications"]) == 2
    two = await page(limit="2", **{"from": one["next_token"]})
    assert [n["event"]["event_id"] for n in two["notifications"]] == [ids[3], ids[2]]
    highlights = await page(only="highlight")
    assert [n["event"]["event_id"] for n in highlights["notifications"]] == [mention]
    for params, errcode in [
        ({"from": "x"}, "M_INVALID_PARAM"),
        ({"limit": "0"}, "M_INVALID_PARAM"),
        ({"limit": "many"}, "M_INVALID_PARAM"),
        ({"only": "everything"}, "M_INVALID_PARAM"),
    ]:
        r = await client.get(f"{CS}/notifications", params=params, headers=auth_header(b))
        assert (r.status_code, r.json()["errcode"]) == (400, errcode), params
    r = await client.get(f"{CS}/notifications")
    assert r.status_code == 401
    # The sender is never notified of their own events.
    r = await client.get(f"{CS}/notifications", headers=auth_header(a))
    assert r.json() == {"notifications": []}
