"""Delayed events (MSC4140): scheduled sends, cancel, restart, send now, across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.config import HomeserverConfig
from tests.conftest import make_config
from tests.helpers import auth_header, create_room, register, serve

V3 = "/_matrix/client/v3"
DELAYED = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"


async def _schedule(
    client: httpx.AsyncClient,
    token: str,
    path: str,
    content: dict[str, Any],
    delay: int | str,
    status: int = 200,
) -> dict[str, Any]:
    r = await client.put(
        V3 + path,
        params={"org.matrix.msc4140.delay": str(delay)},
        json=content,
        headers=auth_header(token),
    )
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


async def _messages(client: httpx.AsyncClient, token: str, room: str) -> list[dict[str, Any]]:
    r = await client.get(
        f"{V3}/rooms/{room}/messages",
        params={"dir": "b", "limit": "50"},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["chunk"]
    return events


async def _act(
    client: httpx.AsyncClient, token: str, delay_id: str, action: str, status: int = 200
) -> dict[str, Any]:
    r = await client.post(
        f"{DELAYED}/{delay_id}", json={"action": action}, headers=auth_header(token)
    )
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_message_sent_when_due(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    delay_id = (
        await _schedule(
            client, token, f"/rooms/{room}/send/m.room.message/t1", {"body": "later"}, 5000
        )
    )["delay_id"]
    r = await client.get(DELAYED, headers=auth_header(token))
    [listed] = r.json()["delayed_events"]
    assert listed["delay_id"] == delay_id and listed["delay"] == 5000
    assert listed["room_id"] == room and listed["content"] == {"body": "later"}
    assert await hs.delayed_events.send_due() == 0
    clock.advance(5000)
    await hs.delayed_events.send_due()  # the background job may have sent it already
    bodies = [e["content"].get("body") for e in await _messages(client, token, room)]
    assert bodies.count("later") == 1
    assert (await client.get(DELAYED, headers=auth_header(token))).json()["delayed_events"] == []


async def test_cancel_restart_and_send_now(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    path = f"/rooms/{room}/state/org.example.call/@alice:test"
    cancelled = (await _schedule(client, token, path, {"left": 1}, 1000))["delay_id"]
    await _act(client, token, cancelled, "cancel")
    restarted = (await _schedule(client, token, path, {"left": 2}, 1000))["delay_id"]
    clock.advance(800)
    r = await client.post(f"{DELAYED}/{restarted}/restart", headers=auth_header(token))
    assert r.status_code == 200, r.text
    clock.advance(800)
    assert await hs.delayed_events.send_due() == 0  # restarted: 200 ms to go
    clock.advance(200)
    await hs.delayed_events.send_due()  # the background job may have sent it already
    r = await client.get(
        f"{V3}/rooms/{room}/state/org.example.call/@alice:test", headers=auth_header(token)
    )
    assert r.json() == {"left": 2}
    now = (
        await _schedule(
            client, token, f"/rooms/{room}/send/m.room.message/t2", {"body": "now"}, 60_000
        )
    )["delay_id"]
    await _act(client, token, now, "send")
    assert "now" in [e["content"].get("body") for e in await _messages(client, token, room)]
    # Gone once sent or cancelled.
    for gone in (cancelled, restarted, now):
        body = await _act(client, token, gone, "cancel", 404)
        assert body["errcode"] == "M_NOT_FOUND"


async def test_sent_after_a_restart(config: HomeserverConfig) -> None:
    async with serve(config, FakeClock(1_700_000_000_000)) as (_, client):
        _, token = await register(client, "alice")
        room = await create_room(client, token)
        await _schedule(
            client,
            token,
            f"/rooms/{room}/state/org.example.call/@alice:test",
            {"gone": True},
            10_000,
        )
        cancelled = (
            await _schedule(
                client, token, f"/rooms/{room}/send/m.room.message/x", {"body": "no"}, 10_000
            )
        )["delay_id"]
        await _act(client, token, cancelled, "cancel")
    # The server was down when the time came: the next one sends it.
    async with serve(config, FakeClock(1_700_000_020_000)) as (hs, client):
        await hs.delayed_events.send_due()  # the background job may have sent it already
        r = await client.get(
            f"{V3}/rooms/{room}/state/org.example.call/@alice:test", headers=auth_header(token)
        )
        assert r.json() == {"gone": True}
        assert "no" not in [e["content"].get("body") for e in await _messages(client, token, room)]


async def test_bad_requests(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    room = await create_room(client, token)
    send = f"/rooms/{room}/send/m.room.message/t"
    for delay, status, errcode in (
        ("x", 400, "M_INVALID_PARAM"),
        (-1, 400, "M_INVALID_PARAM"),
        (24 * 3600 * 1000 + 1, 400, "M_MAX_DELAY_EXCEEDED"),
    ):
        body = await _schedule(client, token, send, {"body": "x"}, delay, status)
        assert body["errcode"] == errcode, (delay, body)
    body = await _schedule(client, bob_token, send, {"body": "x"}, 1000, 403)
    assert body["errcode"] == "M_FORBIDDEN"  # not in the room
    delay_id = (await _schedule(client, token, send, {"body": "x"}, 1000))["delay_id"]
    # Another user's delayed event is unknown to them.
    assert (await _act(client, bob_token, delay_id, "send", 404))["errcode"] == "M_NOT_FOUND"
    assert (await _act(client, token, delay_id, "explode", 400))["errcode"] == "M_BAD_JSON"
    r = await client.post(f"{DELAYED}/{delay_id}/explode", headers=auth_header(token))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")
    r = await client.post(f"{DELAYED}/{delay_id}", json={}, headers=auth_header(token))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    r = await client.get(DELAYED)
    assert r.status_code == 401
    assert alice


async def test_limit_per_user(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    for i in range(100):
        await _schedule(client, token, f"/rooms/{room}/send/m.room.message/t{i}", {}, 1000)
    body = await _schedule(client, token, f"/rooms/{room}/send/m.room.message/over", {}, 1000, 429)
    assert body["errcode"] == "M_LIMIT_EXCEEDED"


async def test_rate_limited_when_scheduled_not_when_sent(tmp_path: Path, db_url: str) -> None:
    """A delayed message counts against the sender's message rate limit when it is
    scheduled; it is sent through the one send path when due, without counting again."""
    config = make_config(
        tmp_path,
        db_url,
        rate_limits={"enabled": True, "message": {"per_second": 0.001, "burst": 2}},
    )
    clock = FakeClock()
    async with serve(config, clock) as (hs, client):
        _, token = await register(client, "alice")
        room = await create_room(client, token)
        send = f"/rooms/{room}/send/m.room.message"
        await _schedule(client, token, f"{send}/d", {"body": "later"}, 5000)
        r = await client.put(f"{V3}{send}/n", json={"body": "now"}, headers=auth_header(token))
        assert r.status_code == 200, r.text
        body = await _schedule(client, token, f"{send}/x", {"body": "x"}, 5000, 429)
        assert body["errcode"] == "M_LIMIT_EXCEEDED"
        clock.advance(5000)
        await hs.delayed_events.send_due()  # the background job may have sent it already
        bodies = [e["content"].get("body") for e in await _messages(client, token, room)]
        assert bodies.count("later") == 1 and "x" not in bodies


async def _state(client: httpx.AsyncClient, token: str, room: str, key: str) -> Any:
    r = await client.get(
        f"{V3}/rooms/{room}/state/org.matrix.msc3401.call.member/{key}",
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_delayed_state_cancelled_by_another_users_state(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(
        client, token, invite=[bob], power_level_content_override={"users": {bob: 100}}
    )
    r = await client.post(f"{V3}/join/{room}", json={}, headers=auth_header(bob_token))
    assert r.status_code == 200, r.text
    path = f"/rooms/{room}/state/org.matrix.msc3401.call.member/"
    # Bob's state at the key from before the scheduling cancels nothing.
    await client.put(
        V3 + path + "shared", json={"by": "bob, before"}, headers=auth_header(bob_token)
    )
    overwritten = (await _schedule(client, token, path + "shared", {"by": "alice"}, 5000))[
        "delay_id"
    ]
    mine = (await _schedule(client, token, path + "mine", {"by": "alice"}, 5000))["delay_id"]
    own_later = (await _schedule(client, token, path + "own", {"by": "alice, delayed"}, 5000))[
        "delay_id"
    ]
    listed = (await client.get(DELAYED, headers=auth_header(token))).json()["delayed_events"]
    assert {e["delay_id"] for e in listed} == {overwritten, mine, own_later}

    r = await client.put(V3 + path + "shared", json={"by": "bob"}, headers=auth_header(bob_token))
    assert r.status_code == 200, r.text
    # Alice's own state at a key does not cancel her delayed one there.
    r = await client.put(V3 + path + "own", json={"by": "alice, now"}, headers=auth_header(token))
    assert r.status_code == 200, r.text
    listed = (await client.get(DELAYED, headers=auth_header(token))).json()["delayed_events"]
    assert {e["delay_id"] for e in listed} == {mine, own_later}
    await _act(client, token, overwritten, "restart", status=404)

    clock.advance(5000)
    await hs.delayed_events.send_due()
    assert await _state(client, token, room, "shared") == {"by": "bob"}
    assert await _state(client, token, room, "mine") == {"by": "alice"}
    assert await _state(client, token, room, "own") == {"by": "alice, delayed"}


async def test_delayed_state_overwritten_while_nobody_looks_is_not_sent(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    """The check is made when it falls due too, not only when the user lists or acts."""
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(
        client, token, invite=[bob], power_level_content_override={"users": {bob: 100}}
    )
    r = await client.post(f"{V3}/join/{room}", json={}, headers=auth_header(bob_token))
    assert r.status_code == 200, r.text
    path = f"/rooms/{room}/state/org.matrix.msc3401.call.member/key"
    await _schedule(client, token, path, {"by": "alice"}, 1000)
    r = await client.put(V3 + path, json={"by": "bob"}, headers=auth_header(bob_token))
    assert r.status_code == 200, r.text
    clock.advance(1000)
    await hs.delayed_events.send_due()
    assert await _state(client, token, room, "key") == {"by": "bob"}
    assert (await client.get(DELAYED, headers=auth_header(token))).json()["delayed_events"] == []
