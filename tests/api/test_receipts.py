"""Receipts and read markers: public, private and threaded receipts, m.fully_read, wake-ups."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from homeserver.core.clock import FakeClock
from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

SYNC = "/_matrix/client/v3/sync"
CS = "/_matrix/client/v3"


def _receipt_path(room_id: str, receipt_type: str, event_id: str) -> str:
    return f"{CS}/rooms/{room_id}/receipt/{receipt_type}/{event_id}"


async def _sync(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    params.setdefault("set_presence", "offline")
    r = await client.get(
        SYNC, params={k: str(v) for k, v in params.items()}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


def _receipts_in(body: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    """The content of each m.receipt event of the room."""
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return [
        e["content"]
        for e in room.get("ephemeral", {}).get("events", [])
        if e["type"] == "m.receipt"
    ]


async def _send(
    client: httpx.AsyncClient,
    token: str,
    room_id: str,
    text: str,
    content: dict[str, Any] | None = None,
) -> str:
    r = await client.put(
        f"{CS}/rooms/{room_id}/send/m.room.message/{text}",
        json=content or {"msgtype": "m.text", "body": text},
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
    path = _receipt_path(room_id, receipt_type, event_id)
    r = await client.post(path, json=body if body is not None else {}, headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert_response_matches("POST", path, 200, r.json())


async def _room_of_two(client: httpx.AsyncClient) -> tuple[str, str, str, str, str]:
    alice, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    r = await client.post(
        f"{CS}/createRoom", json={"preset": "public_chat"}, headers=auth_header(a_token)
    )
    room_id = str(r.json()["room_id"])
    r = await client.post(f"{CS}/join/{room_id}", json={}, headers=auth_header(b_token))
    assert r.status_code == 200, r.text
    return room_id, alice, a_token, bob, b_token


async def test_read_receipt_reaches_the_room_once(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    room_id, alice, a_token, bob, b_token = await _room_of_two(client)
    first = await _send(client, b_token, room_id, "one")
    second = await _send(client, b_token, room_id, "two")
    since = (await _sync(client, b_token))["next_batch"]
    await _receipt(client, a_token, room_id, "m.read", first)
    body = await _sync(client, b_token, since=since)
    ts = clock.now_ms()
    assert _receipts_in(body, room_id) == [{first: {"m.read": {alice: {"ts": ts}}}}]
    # Incremental syncs carry only new receipts.
    clock.advance(10)
    await _receipt(client, b_token, room_id, "m.read", second)
    body = await _sync(client, b_token, since=body["next_batch"])
    assert _receipts_in(body, room_id) == [{second: {"m.read": {bob: {"ts": ts + 10}}}}]
    assert _receipts_in(await _sync(client, b_token, since=body["next_batch"]), room_id) == []
    # An initial sync has everyone's latest.
    assert _receipts_in(await _sync(client, a_token), room_id) == [
        {first: {"m.read": {alice: {"ts": ts}}}, second: {"m.read": {bob: {"ts": ts + 10}}}}
    ]
    # A receipt never moves back: an older event is accepted and ignored.
    await _receipt(client, b_token, room_id, "m.read", first)
    assert _receipts_in(await _sync(client, a_token, since=body["next_batch"]), room_id) == []


async def test_private_receipt_reaches_only_its_owner(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    room_id, alice, a_token, _, b_token = await _room_of_two(client)
    event_id = await _send(client, b_token, room_id, "secret")
    a_since = (await _sync(client, a_token))["next_batch"]
    b_since = (await _sync(client, b_token))["next_batch"]
    await _receipt(client, a_token, room_id, "m.read.private", event_id)
    mine = await _sync(client, a_token, since=a_since)
    assert _receipts_in(mine, room_id) == [
        {event_id: {"m.read.private": {alice: {"ts": clock.now_ms()}}}}
    ]
    assert _receipts_in(await _sync(client, b_token, since=b_since), room_id) == []
    assert _receipts_in(await _sync(client, b_token), room_id) == []
    assert _receipts_in(await _sync(client, a_token), room_id) != []
    # Through /read_markers as well.
    later = await _send(client, b_token, room_id, "later")
    r = await client.post(
        f"{CS}/rooms/{room_id}/read_markers",
        json={"m.read.private": later},
        headers=auth_header(a_token),
    )
    assert r.status_code == 200, r.text
    assert _receipts_in(await _sync(client, b_token), room_id) == []


async def test_threaded_receipts(client: httpx.AsyncClient, clock: FakeClock) -> None:
    room_id, alice, a_token, _, b_token = await _room_of_two(client)
    root = await _send(client, b_token, room_id, "root")
    reply = await _send(
        client,
        b_token,
        room_id,
        "reply",
        {
            "msgtype": "m.text",
            "body": "in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        },
    )
    # An edit of the reply is in the thread too (one more hop).
    edit = await _send(
        client,
        b_token,
        room_id,
        "edit",
        {
            "msgtype": "m.text",
            "body": "* edited",
            "m.relates_to": {"rel_type": "m.replace", "event_id": reply},
        },
    )
    since = (await _sync(client, b_token))["next_batch"]
    await _receipt(client, a_token, room_id, "m.read", edit, {"thread_id": root})
    await _receipt(client, a_token, room_id, "m.read", root, {"thread_id": "main"})
    await _receipt(client, a_token, room_id, "m.read", root)
    ts = clock.now_ms()
    got = _receipts_in(await _sync(client, b_token, since=since), room_id)
    # One event per thread; unthreaded first.
    assert got == [
        {root: {"m.read": {alice: {"ts": ts}}}},
        {edit: {"m.read": {alice: {"ts": ts, "thread_id": root}}}},
        {root: {"m.read": {alice: {"ts": ts, "thread_id": "main"}}}},
    ]

    for event_id, thread_id in (
        (reply, "main"),
        (root, "$other"),
        (reply, "nonsense"),
        (reply, ""),
    ):
        r = await client.post(
            _receipt_path(room_id, "m.read", event_id),
            json={"thread_id": thread_id},
            headers=auth_header(a_token),
        )
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), thread_id


async def test_read_markers_and_fully_read(client: httpx.AsyncClient) -> None:
    room_id, alice, a_token, _, b_token = await _room_of_two(client)
    first = await _send(client, b_token, room_id, "one")
    second = await _send(client, b_token, room_id, "two")
    a_since = (await _sync(client, a_token))["next_batch"]
    b_since = (await _sync(client, b_token))["next_batch"]
    path = f"{CS}/rooms/{room_id}/read_markers"
    r = await client.post(
        path, json={"m.fully_read": first, "m.read": second}, headers=auth_header(a_token)
    )
    assert r.status_code == 200, r.text
    assert_response_matches("POST", path, 200, r.json())

    mine = await _sync(client, a_token, since=a_since)
    account_data = mine["rooms"]["join"][room_id]["account_data"]["events"]
    assert {"type": "m.fully_read", "content": {"event_id": first}} in account_data
    got = _receipts_in(await _sync(client, b_token, since=b_since), room_id)
    assert list(got[0]) == [second] and alice in got[0][second]["m.read"]
    r = await client.get(
        f"{CS}/user/{alice}/rooms/{room_id}/account_data/m.fully_read", headers=auth_header(a_token)
    )
    assert r.json() == {"event_id": first}

    # m.fully_read through the receipt endpoint: the same marker, never an m.receipt.
    b_since = (await _sync(client, b_token))["next_batch"]
    await _receipt(client, a_token, room_id, "m.fully_read", second)
    r = await client.get(
        f"{CS}/user/{alice}/rooms/{room_id}/account_data/m.fully_read", headers=auth_header(a_token)
    )
    assert r.json() == {"event_id": second}
    assert _receipts_in(await _sync(client, b_token, since=b_since), room_id) == []
    # Clients cannot write the marker as plain account data (spec).
    r = await client.put(
        f"{CS}/user/{alice}/rooms/{room_id}/account_data/m.fully_read",
        json={"event_id": first},
        headers=auth_header(a_token),
    )
    assert r.status_code == 405


async def test_receipt_wakes_a_long_poll(client: httpx.AsyncClient) -> None:
    room_id, alice, a_token, _, b_token = await _room_of_two(client)
    event_id = await _send(client, b_token, room_id, "hello")
    since = (await _sync(client, b_token))["next_batch"]
    waiting = asyncio.create_task(_sync(client, b_token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await _receipt(client, a_token, room_id, "m.read", event_id)
    body = await asyncio.wait_for(waiting, 10)
    assert alice in _receipts_in(body, room_id)[0][event_id]["m.read"]


async def test_bad_inputs(client: httpx.AsyncClient) -> None:
    room_id, _, a_token, _, b_token = await _room_of_two(client)
    event_id = await _send(client, b_token, room_id, "hello")
    _, c_token = await register(client, "carol")
    r = await client.post(f"{CS}/createRoom", json={}, headers=auth_header(c_token))
    elsewhere = await _send(client, c_token, str(r.json()["room_id"]), "elsewhere")
    markers = f"{CS}/rooms/{room_id}/read_markers"
    cases: list[tuple[str, str, Any, int, str]] = [
        (a_token, _receipt_path(room_id, "m.seen", event_id), {}, 400, "M_INVALID_PARAM"),
        (c_token, _receipt_path(room_id, "m.read", event_id), {}, 403, "M_FORBIDDEN"),
        (a_token, _receipt_path(room_id, "m.read", "$unknown"), {}, 404, "M_NOT_FOUND"),
        (a_token, _receipt_path(room_id, "m.read", elsewhere), {}, 404, "M_NOT_FOUND"),
        (a_token, _receipt_path(room_id, "m.read", "not-an-event"), {}, 400, "M_INVALID_PARAM"),
        (a_token, _receipt_path(room_id, "m.read", event_id), {"thread_id": 5}, 400, "M_BAD_JSON"),
        (
            a_token,
            _receipt_path(room_id, "m.fully_read", event_id),
            {"thread_id": "main"},
            400,
            "M_INVALID_PARAM",
        ),
        (a_token, _receipt_path(room_id, "m.read", event_id), b"{", 400, "M_NOT_JSON"),
        (a_token, _receipt_path(room_id, "m.read", event_id), [], 400, "M_BAD_JSON"),
        (a_token, markers, {"m.read": 5}, 400, "M_BAD_JSON"),
        (a_token, markers, {"m.fully_read": "$unknown"}, 404, "M_NOT_FOUND"),
        (a_token, markers, {"m.read": "nope"}, 400, "M_INVALID_PARAM"),
        (c_token, markers, {"m.read": event_id}, 403, "M_FORBIDDEN"),
        (a_token, markers, b"nope", 400, "M_NOT_JSON"),
    ]
    for token, path, body, status, errcode in cases:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = await client.post(path, headers=auth_header(token), **kwargs)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), (path, body)
    # No body at all is an unthreaded receipt (clients before spec v1.4 send none).
    r = await client.post(_receipt_path(room_id, "m.read", event_id), headers=auth_header(a_token))
    assert r.status_code == 200, r.text
    r = await client.post(markers, json={"m.read": event_id})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
