"""Typing notifications: delivered to the room, stopped, expired on time, woken long-polls."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

SYNC = "/_matrix/client/v3/sync"


def _typing_path(room_id: str, user_id: str) -> str:
    return f"/_matrix/client/v3/rooms/{room_id}/typing/{user_id}"


async def _sync(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    params.setdefault("set_presence", "offline")
    r = await client.get(
        SYNC, params={k: str(v) for k, v in params.items()}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


def _typing_in(body: dict[str, Any], room_id: str) -> list[str] | None:
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    found = [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == "m.typing"]
    if not found:
        return None
    assert len(found) == 1 and set(found[0]) == {"type", "content"}
    user_ids: list[str] = found[0]["content"]["user_ids"]
    return user_ids


async def _set_typing(
    client: httpx.AsyncClient, token: str, room_id: str, user_id: str, body: dict[str, Any]
) -> None:
    path = _typing_path(room_id, user_id)
    r = await client.put(path, json=body, headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert_response_matches("PUT", path, 200, r.json())


async def _room_of_two(client: httpx.AsyncClient) -> tuple[str, str, str, str, str]:
    alice, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    r = await client.post(
        "/_matrix/client/v3/createRoom",
        json={"preset": "public_chat"},
        headers=auth_header(a_token),
    )
    room_id = str(r.json()["room_id"])
    r = await client.post(
        f"/_matrix/client/v3/join/{room_id}", json={}, headers=auth_header(b_token)
    )
    assert r.status_code == 200, r.text
    return room_id, alice, a_token, "@bob:test", b_token


async def test_start_and_stop_typing(client: httpx.AsyncClient) -> None:
    room_id, alice, a_token, _, b_token = await _room_of_two(client)
    since = (await _sync(client, b_token))["next_batch"]
    await _set_typing(client, a_token, room_id, alice, {"typing": True, "timeout": 30_000})
    body = await _sync(client, b_token, since=since)
    assert _typing_in(body, room_id) == [alice]
    # The typist's own sync shows it too; an initial sync shows who types now.
    assert _typing_in(await _sync(client, a_token), room_id) == [alice]
    assert _typing_in(await _sync(client, b_token), room_id) == [alice]
    # Typing again only moves the expiry: nothing new to tell.
    await _set_typing(client, a_token, room_id, alice, {"typing": True, "timeout": 30_000})
    again = await _sync(client, b_token, since=body["next_batch"])
    assert _typing_in(again, room_id) is None

    await _set_typing(client, a_token, room_id, alice, {"typing": False})
    stopped = await _sync(client, b_token, since=again["next_batch"])
    assert _typing_in(stopped, room_id) == []
    assert _typing_in(await _sync(client, b_token), room_id) is None
    # Stopping twice changes nothing.
    await _set_typing(client, a_token, room_id, alice, {"typing": False})
    assert _typing_in(await _sync(client, b_token, since=stopped["next_batch"]), room_id) is None


async def test_typing_expires_on_time(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    room_id, alice, a_token, _, b_token = await _room_of_two(client)
    await _set_typing(client, a_token, room_id, alice, {"typing": True, "timeout": 10_000})
    since = (await _sync(client, b_token))["next_batch"]
    clock.advance(9_999)
    await hs.typing.expire_once()
    assert _typing_in(await _sync(client, b_token, since=since), room_id) is None
    assert _typing_in(await _sync(client, b_token), room_id) == [alice]

    # The expiry wakes a waiting long-poll, which sees alice stop.
    waiting = asyncio.create_task(_sync(client, b_token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    clock.advance(1)
    await hs.typing.expire_once()
    body = await asyncio.wait_for(waiting, 10)
    assert _typing_in(body, room_id) == []
    assert _typing_in(await _sync(client, b_token), room_id) is None


async def test_long_timeouts_are_capped(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    room_id, alice, a_token, _, b_token = await _room_of_two(client)
    await _set_typing(client, a_token, room_id, alice, {"typing": True, "timeout": 10**12})
    clock.advance(120_000)
    await hs.typing.expire_once()
    assert _typing_in(await _sync(client, b_token), room_id) is None
    # Without a timeout, typing lasts 30 seconds.
    await _set_typing(client, a_token, room_id, alice, {"typing": True})
    clock.advance(29_999)
    assert _typing_in(await _sync(client, b_token), room_id) == [alice]
    clock.advance(1)
    assert _typing_in(await _sync(client, b_token), room_id) is None


async def test_typing_wakes_a_long_poll(client: httpx.AsyncClient) -> None:
    room_id, alice, a_token, _, b_token = await _room_of_two(client)
    since = (await _sync(client, b_token))["next_batch"]
    waiting = asyncio.create_task(_sync(client, b_token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await _set_typing(client, a_token, room_id, alice, {"typing": True, "timeout": 30_000})
    body = await asyncio.wait_for(waiting, 10)
    assert _typing_in(body, room_id) == [alice]


async def test_bad_inputs(client: httpx.AsyncClient) -> None:
    room_id, alice, a_token, bob, _ = await _room_of_two(client)
    carol, c_token = await register(client, "carol")
    ok = {"typing": True, "timeout": 1000}
    cases: list[tuple[str, str, Any, int, str]] = [
        (a_token, _typing_path(room_id, bob), ok, 403, "M_FORBIDDEN"),
        (c_token, _typing_path(room_id, carol), ok, 403, "M_FORBIDDEN"),
        (a_token, _typing_path("!unknown:test", alice), ok, 403, "M_FORBIDDEN"),
        (a_token, _typing_path(room_id, alice), {"timeout": 1000}, 400, "M_MISSING_PARAM"),
        (a_token, _typing_path(room_id, alice), {"typing": "yes"}, 400, "M_BAD_JSON"),
        (a_token, _typing_path(room_id, alice), {"typing": 1}, 400, "M_BAD_JSON"),
        (a_token, _typing_path(room_id, alice), {"typing": True, "timeout": -1}, 400, "M_BAD_JSON"),
        (
            a_token,
            _typing_path(room_id, alice),
            {"typing": True, "timeout": "1"},
            400,
            "M_BAD_JSON",
        ),
        (a_token, _typing_path(room_id, alice), b"not json", 400, "M_NOT_JSON"),
        (a_token, _typing_path("nope", alice), ok, 400, "M_INVALID_PARAM"),
        (a_token, _typing_path(room_id, "alice"), ok, 400, "M_INVALID_PARAM"),
    ]
    for token, path, body, status, errcode in cases:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = await client.put(path, headers=auth_header(token), **kwargs)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), (path, body)
    r = await client.put(_typing_path(room_id, alice), json=ok)
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
