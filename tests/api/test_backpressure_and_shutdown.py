"""Backpressure and shut-down as a client sees them, on both databases: no database
connection in time is a 503 ``M_LIMIT_EXCEEDED`` with ``Retry-After``, over HTTP and over
the WebSocket; at shut-down a long-poll answers at once with a valid token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.pool_guard import PoolExhausted
from homeserver.websocket import CloseCode
from tests.api.test_websocket_transport import StuckClient, _until
from tests.conftest import make_config
from tests.helpers import auth_header, register, serve


async def test_no_connection_in_time_is_a_503_with_retry_after(
    hs: Homeserver, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = await register(client, "alice")

    async def exhausted(*_: object, **__: object) -> None:
        raise PoolExhausted("all 20 read connections stayed in use for 10 s", 5)

    monkeypatch.setattr(hs.room_store, "get_sync_memberships", exhausted)
    r = await client.get("/_matrix/client/v3/sync", headers=auth_header(token))
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    assert r.json() == {
        "errcode": "M_LIMIT_EXCEEDED",
        "error": "The server is busy; try again later",
        "retry_after_ms": 5000,
    }


async def test_a_long_poll_answers_at_once_at_shutdown(
    hs: Homeserver, client: httpx.AsyncClient
) -> None:
    _, token = await register(client, "alice")
    r = await client.post("/_matrix/client/v3/createRoom", headers=auth_header(token), json={})
    assert r.status_code == 200
    since = (await client.get("/_matrix/client/v3/sync", headers=auth_header(token))).json()[
        "next_batch"
    ]
    waiting = asyncio.create_task(
        client.get(
            "/_matrix/client/v3/sync",
            params={"since": since, "timeout": 30_000},
            headers=auth_header(token),
        )
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    hs.begin_shutdown()
    r = await asyncio.wait_for(waiting, 2)
    assert r.status_code == 200 and r.json() == {"next_batch": since}
    # A long-poll that comes during the shut-down does not wait either.
    r = await asyncio.wait_for(
        client.get(
            "/_matrix/client/v3/sync",
            params={"since": since, "timeout": 30_000},
            headers=auth_header(token),
        ),
        2,
    )
    assert r.status_code == 200 and r.json() == {"next_batch": since}


async def test_a_websocket_closes_with_1001_at_shutdown(tmp_path: Path, db_url: str) -> None:
    async with serve(make_config(tmp_path, db_url)) as (hs, client):
        _, token = await register(client, "alice")
        peer = StuckClient()
        peer.reading.set()
        task = asyncio.create_task(
            hs.websocket.serve(peer, authorization=f"Bearer {token}", token_in_url=False, query={})
        )
        await _until(lambda: len(peer.sent) == 2)  # ready, and the first sync
        hs.begin_shutdown()
        await asyncio.wait_for(task, 5)
        assert peer.closed is not None and peer.closed[0] == CloseCode.GOING_AWAY == 1001
        assert not hs.websocket.connections
