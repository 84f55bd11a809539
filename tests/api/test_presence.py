"""Presence: PUT/GET, set_presence on /sync, timers, privacy, long-poll wake-ups, disabled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from tests.conftest import make_config
from tests.helpers import auth_header, register, serve
from tests.openapi_schema import assert_response_matches

SYNC = "/_matrix/client/v3/sync"


def _status(user_id: str) -> str:
    return f"/_matrix/client/v3/presence/{user_id}/status"


async def _sync(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    r = await client.get(
        SYNC, params={k: str(v) for k, v in params.items()}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


def _presence_of(body: dict[str, Any], user_id: str) -> dict[str, Any] | None:
    found = [e for e in body.get("presence", {}).get("events", []) if e["sender"] == user_id]
    assert all(e["type"] == "m.presence" for e in found)
    return found[-1]["content"] if found else None


async def _put(client: httpx.AsyncClient, token: str, user_id: str, body: dict[str, Any]) -> None:
    r = await client.put(_status(user_id), json=body, headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert_response_matches("PUT", _status(user_id), 200, r.json())


async def _get(client: httpx.AsyncClient, token: str, user_id: str) -> dict[str, Any]:
    r = await client.get(_status(user_id), headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert_response_matches("GET", _status(user_id), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


async def _shared_room(client: httpx.AsyncClient, a_token: str, b_token: str) -> str:
    r = await client.post(
        "/_matrix/client/v3/createRoom",
        json={"preset": "public_chat"},
        headers=auth_header(a_token),
    )
    assert r.status_code == 200, r.text
    room_id = str(r.json()["room_id"])
    r = await client.post(
        f"/_matrix/client/v3/join/{room_id}", json={}, headers=auth_header(b_token)
    )
    assert r.status_code == 200, r.text
    return room_id


async def test_put_and_get_own_presence(client: httpx.AsyncClient, clock: FakeClock) -> None:
    alice, token = await register(client, "alice")
    assert await _get(client, token, alice) == {"presence": "offline"}
    await _put(client, token, alice, {"presence": "online", "status_msg": "at lunch"})
    clock.advance(1500)
    assert await _get(client, token, alice) == {
        "presence": "online",
        "status_msg": "at lunch",
        "currently_active": True,
        "last_active_ago": 1500,
    }
    # Without status_msg the message stays; an empty one clears it.
    await _put(client, token, alice, {"presence": "unavailable"})
    got = await _get(client, token, alice)
    assert (got["presence"], got["status_msg"], got["last_active_ago"]) == (
        "unavailable",
        "at lunch",
        0,
    )
    assert "currently_active" not in got
    await _put(client, token, alice, {"presence": "unavailable", "status_msg": ""})
    assert "status_msg" not in await _get(client, token, alice)


async def test_presence_goes_only_to_those_who_share_a_room(client: httpx.AsyncClient) -> None:
    alice, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    carol, c_token = await register(client, "carol")
    await _shared_room(client, a_token, b_token)
    b_since = (await _sync(client, b_token, set_presence="offline"))["next_batch"]
    c_since = (await _sync(client, c_token, set_presence="offline"))["next_batch"]

    mine = await _sync(client, a_token)  # a sync brings alice online
    assert _presence_of(mine, alice) == {
        "presence": "online",
        "currently_active": True,
        "last_active_ago": 0,
    }
    await _put(client, a_token, alice, {"presence": "online", "status_msg": "hello"})

    seen = await _sync(client, b_token, since=b_since, set_presence="offline")
    assert _presence_of(seen, alice) == {
        "presence": "online",
        "currently_active": True,
        "last_active_ago": 0,
        "status_msg": "hello",
    }
    stranger = await _sync(client, c_token, since=c_since, set_presence="offline")
    assert _presence_of(stranger, alice) is None
    assert _presence_of(await _sync(client, c_token, set_presence="offline"), alice) is None
    # Bob's initial sync shows alice; an incremental one with nothing new shows nothing.
    assert _presence_of(await _sync(client, b_token, set_presence="offline"), alice) is not None
    again = await _sync(client, b_token, since=seen["next_batch"], set_presence="offline")
    assert "presence" not in again

    assert (await _get(client, b_token, alice))["presence"] == "online"
    r = await client.get(_status(alice), headers=auth_header(c_token))
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await client.get(_status("@nobody:test"), headers=auth_header(c_token))
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert carol and bob


async def test_someone_new_in_a_room_brings_their_presence(client: httpx.AsyncClient) -> None:
    alice, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    await _sync(client, a_token)  # online
    b_since = (await _sync(client, b_token))["next_batch"]
    await _shared_room(client, a_token, b_token)
    # Alice's presence did not change, but bob shares a room with her now.
    body = await _sync(client, b_token, since=b_since)
    assert _presence_of(body, alice) == {
        "presence": "online",
        "currently_active": True,
        "last_active_ago": 0,
    }
    assert bob


async def test_timers_idle_and_offline(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    alice, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    await _shared_room(client, a_token, b_token)
    since = (await _sync(client, a_token))["next_batch"]  # online
    b_since = (await _sync(client, b_token, set_presence="offline"))["next_batch"]

    # While a long-poll is open alice stays online, whatever the clock says; after a minute
    # without activity she is no longer "currently active", and her own sync hears of it.
    poll = asyncio.create_task(_sync(client, a_token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    clock.advance(hs.config.presence.offline_after_ms + 31_000)
    await hs.presence.sweep_once()
    body = await asyncio.wait_for(poll, 10)
    assert _presence_of(body, alice) == {
        "presence": "online",
        "currently_active": False,
        "last_active_ago": 61_000,
    }
    seen = await _sync(client, b_token, since=b_since, set_presence="offline")
    assert _presence_of(seen, alice) == {
        "presence": "online",
        "currently_active": False,
        "last_active_ago": 61_000,
    }

    # Idle for idle_after_ms with a sync open: unavailable.
    poll = asyncio.create_task(_sync(client, a_token, since=body["next_batch"], timeout=30_000))
    await asyncio.sleep(0.1)
    clock.advance(hs.config.presence.idle_after_ms)
    await hs.presence.sweep_once()
    body = await asyncio.wait_for(poll, 10)
    assert (_presence_of(body, alice) or {}).get("presence") == "unavailable"
    seen = await _sync(client, b_token, since=seen["next_batch"], set_presence="offline")
    assert (_presence_of(seen, alice) or {}).get("presence") == "unavailable"
    # A sync does not end idleness (it is no activity); a PUT does.
    await _sync(client, a_token)
    assert (await _get(client, b_token, alice))["presence"] == "unavailable"

    # No sync open: offline after offline_after_ms, not before.
    clock.advance(hs.config.presence.offline_after_ms - 1)
    await hs.presence.sweep_once()
    assert (await _get(client, b_token, alice))["presence"] == "unavailable"
    clock.advance(2)
    await hs.presence.sweep_once()
    seen = await _sync(client, b_token, since=seen["next_batch"], set_presence="offline")
    content = _presence_of(seen, alice)
    assert content is not None and content["presence"] == "offline"
    assert content["last_active_ago"] > hs.config.presence.idle_after_ms
    # The next sync brings her back online.
    await _sync(client, a_token)
    assert (await _get(client, b_token, alice))["presence"] == "online"


async def test_set_presence_on_sync(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    await _sync(client, token, set_presence="offline")
    assert (await _get(client, token, alice))["presence"] == "offline"
    await _sync(client, token, set_presence="unavailable")
    assert (await _get(client, token, alice))["presence"] == "unavailable"
    await _put(client, token, alice, {"presence": "online"})
    await _sync(client, token, set_presence="unavailable")
    assert (await _get(client, token, alice))["presence"] == "unavailable"


async def test_presence_change_wakes_a_long_poll(client: httpx.AsyncClient) -> None:
    alice, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    await _shared_room(client, a_token, b_token)
    since = (await _sync(client, b_token))["next_batch"]
    waiting = asyncio.create_task(_sync(client, b_token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await _put(client, a_token, alice, {"presence": "unavailable", "status_msg": "away"})
    body = await asyncio.wait_for(waiting, 10)
    assert _presence_of(body, alice) == {
        "presence": "unavailable",
        "status_msg": "away",
        "last_active_ago": 0,
    }


async def test_timers_survive_a_restart(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url)
    clock = FakeClock()
    async with serve(config, clock) as (_, client):
        alice, token = await register(client, "alice")
        await _sync(client, token)
    clock.advance(config.presence.offline_after_ms + 1)
    async with serve(config, clock) as (hs, client):
        # A new process, with nothing in memory: the timestamps in the database decide.
        await hs.presence.sweep_once()
        assert (await _get(client, token, alice))["presence"] == "offline"


async def test_disabled_presence(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, presence={"enabled": False})
    async with serve(config) as (hs, client):
        alice, a_token = await register(client, "alice")
        _, b_token = await register(client, "bob")
        await _shared_room(client, a_token, b_token)
        await _sync(client, a_token)
        await _put(client, a_token, alice, {"presence": "online", "status_msg": "hi"})
        assert await _get(client, b_token, alice) == {"presence": "offline"}
        assert "presence" not in await _sync(client, b_token)
        assert not hs.has_background_job(hs.presence.run_sweeper)


async def test_bad_inputs(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    bob, _ = await register(client, "bob")
    cases: list[tuple[str, str, Any, int, str]] = [
        ("PUT", _status(bob), {"presence": "online"}, 403, "M_FORBIDDEN"),
        ("PUT", _status(alice), {"presence": "busy"}, 400, "M_BAD_JSON"),
        ("PUT", _status(alice), {"status_msg": "x"}, 400, "M_MISSING_PARAM"),
        ("PUT", _status(alice), {"presence": "online", "status_msg": 5}, 400, "M_BAD_JSON"),
        ("PUT", _status(alice), ["online"], 400, "M_BAD_JSON"),
        ("PUT", _status(alice), b"{nope", 400, "M_NOT_JSON"),
        ("PUT", _status("alice"), {"presence": "online"}, 400, "M_INVALID_PARAM"),
        ("GET", _status("not-a-user"), None, 400, "M_INVALID_PARAM"),
    ]
    for method, path, body, status, errcode in cases:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = await client.request(
            method, path, headers=auth_header(token), **(kwargs if body is not None else {})
        )
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), (path, body)
    r = await client.get(_status(alice))
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_activity_brings_an_idle_user_back(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    alice, token = await register(client, "alice")
    await _put(client, token, alice, {"presence": "unavailable"})
    clock.advance(5_000)
    await hs.presence.bump_active(alice)  # what sending an event does
    assert await _get(client, token, alice) == {
        "presence": "online",
        "currently_active": True,
        "last_active_ago": 0,
    }


async def test_sending_a_message_is_activity(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    r = await client.post("/_matrix/client/v3/createRoom", json={}, headers=auth_header(token))
    room_id = r.json()["room_id"]
    send = f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message"
    # A first send marks alice active; going unavailable by hand and sending again, even at
    # once, brings her back (the in-memory shortcut must not skip that).
    r = await client.put(
        f"{send}/1", json={"msgtype": "m.text", "body": "a"}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    await _put(client, token, alice, {"presence": "unavailable"})
    r = await client.put(
        f"{send}/2", json={"msgtype": "m.text", "body": "b"}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    assert (await _get(client, token, alice))["presence"] == "online"
