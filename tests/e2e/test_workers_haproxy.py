"""Three workers (``homeserver run --workers 3``) on PostgreSQL and Redis behind HAProxy,
with config/haproxy.cfg as shipped (ports changed): people on different workers chat, a
WebSocket on worker 1 receives what a long-poll client on worker 3 sent, a long-poll on
worker 2 is woken by a send on worker 1, and matrix-nio through HAProxy (each request to
whichever worker) sees every message once, in order. config/nginx.conf passes ``nginx -t``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nio
import pytest
from websockets.asyncio.client import connect

from tests.conftest import in_thread, truncate
from tests.e2e.conftest import free_port
from tests.e2e.workers import (
    WS_PATH,
    Deployment,
    Person,
    consecutive_ports,
    ensure_binary,
    register,
    shipped,
)

WORKERS = Deployment.workers
BIG_TIMELINE = {"room": {"timeline": {"limit": 100}}}
WAIT_S = 20.0  # far below the long-polls' own timeout: only a wake-up answers in time


@pytest.fixture
def deployment(tmp_path: Path, pg_database: str) -> Iterator[Deployment]:
    haproxy = ensure_binary("haproxy", "haproxy")
    in_thread(lambda: truncate(pg_database))
    deploy = Deployment(tmp_path, pg_database)
    try:
        deploy.start(haproxy)
        yield deploy
    finally:
        deploy.stop()


@pytest.fixture
async def http_clients(deployment: Deployment) -> AsyncIterator[dict[int, httpx.AsyncClient]]:
    clients = {
        i: httpx.AsyncClient(base_url=deployment.worker_url(i), timeout=90)
        for i in range(1, WORKERS + 1)
    }
    clients[0] = httpx.AsyncClient(base_url=deployment.front_url, timeout=90)  # HAProxy
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()


def _bodies(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id)
    if not room:
        return []
    return [
        e["content"]["body"] for e in room["timeline"]["events"] if e["type"] == "m.room.message"
    ]


async def test_three_workers_behind_haproxy_chat_as_one_server(
    deployment: Deployment, http_clients: dict[int, httpx.AsyncClient]
) -> None:
    # Alice on worker 1, Bob on worker 3, Carol on worker 2.
    alice = await register(http_clients[1], "alice")
    bob = await register(http_clients[3], "bob")
    carol = await register(http_clients[2], "carol")
    room_id = (await alice.call("POST", "/createRoom", {"preset": "public_chat"}))["room_id"]
    await bob.call("POST", f"/join/{room_id}", {})
    await carol.call("POST", f"/join/{room_id}", {})
    assert (await http_clients[0].get("/health")).json()["status"] == "ok"

    # Bob's WebSocket on worker 1 (through no proxy), Carol's long-poll on worker 2.
    ws_url = deployment.worker_url(1).replace("http://", "ws://") + WS_PATH
    async with connect(
        ws_url, additional_headers=bob.headers, max_size=None, proxy=None, ping_interval=None
    ) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert first["type"] == "ready"
        initial = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert initial["type"] == "sync"
        carol_since = (await carol.call("GET", "/sync", timeout="0"))["next_batch"]
        carol_poll = asyncio.create_task(
            carol.call("GET", "/sync", since=carol_since, timeout="60000")
        )
        await asyncio.sleep(0.5)  # Carol is waiting on worker 2
        # Bob, a long-poll client on worker 3, sends; Alice on worker 1 too.
        await bob.send(room_id, "from bob on worker 3")
        woken = await asyncio.wait_for(carol_poll, WAIT_S)
        assert "from bob on worker 3" in _bodies(woken, room_id)
        await alice.send(room_id, "from alice on worker 1")
        got: list[str] = []
        async with asyncio.timeout(WAIT_S):
            while got != ["from bob on worker 3", "from alice on worker 1"]:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "sync":
                    got.extend(_bodies(frame, room_id))
        # Carol's next long-poll from her token, again on worker 2, gets Alice's message.
        again = await asyncio.wait_for(
            carol.call("GET", "/sync", since=woken["next_batch"], timeout="60000"), WAIT_S
        )
        assert _bodies(again, room_id) == ["from alice on worker 1"]

        # A WebSocket through HAProxy (pass-through) too.
        front_ws = deployment.front_url.replace("http://", "ws://") + WS_PATH
        async with connect(
            front_ws,
            additional_headers=carol.headers,
            max_size=None,
            proxy=None,
            ping_interval=None,
        ) as carol_ws:
            assert json.loads(await asyncio.wait_for(carol_ws.recv(), WAIT_S))["type"] == "ready"
            assert json.loads(await asyncio.wait_for(carol_ws.recv(), WAIT_S))["type"] == "sync"
            await bob.send(room_id, "through the balancer")
            async with asyncio.timeout(WAIT_S):
                seen: list[str] = []
                while "through the balancer" not in seen:
                    frame = json.loads(await carol_ws.recv())
                    if frame.get("type") == "sync":
                        seen.extend(_bodies(frame, room_id))

    # matrix-nio through HAProxy: every request to whichever worker is least loaded; many
    # sends by two people on two workers, each seen once and in one order by both.
    config = nio.AsyncClientConfig(max_timeouts=3, request_timeout=60)
    dave = nio.AsyncClient(deployment.front_url, config=config)
    try:
        registered = await dave.register("dave", "correct horse")
        assert isinstance(registered, nio.RegisterResponse), registered
        joined = await dave.join(room_id)
        assert isinstance(joined, nio.JoinResponse), joined
        synced = await dave.sync(timeout=0)
        assert isinstance(synced, nio.SyncResponse), synced

        async def sends(person: Person, tag: str) -> None:
            for n in range(15):
                await person.send(room_id, f"{tag} {n}")

        await asyncio.gather(sends(alice, "a"), sends(bob, "b"))
        expected = {f"{t} {n}" for t in "ab" for n in range(15)}
        order: list[str] = []
        async with asyncio.timeout(WAIT_S * 2):
            while not expected <= set(order):
                # A timeline limit above the sends: a limited timeline would leave some out.
                response = await dave.sync(timeout=30_000, sync_filter=BIG_TIMELINE)
                assert isinstance(response, nio.SyncResponse), response
                timeline = response.rooms.join.get(room_id)
                if timeline is not None:
                    order.extend(
                        e.body
                        for e in timeline.timeline.events
                        if isinstance(e, nio.RoomMessageText)
                    )
        assert len(order) == len(set(order)), "an event came twice"
        # Alice, on worker 1 and from scratch, sees them in the same order.
        history = await alice.call("GET", f"/rooms/{room_id}/messages", dir="b", limit="100")
        backwards = [
            e["content"]["body"]
            for e in history["chunk"]
            if e["type"] == "m.room.message" and e["content"]["body"] in expected
        ]
        assert list(reversed(backwards)) == [b for b in order if b in expected]
    finally:
        await dave.close()


def test_the_shipped_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = ensure_binary("nginx", "nginx")
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(shipped("nginx.conf", consecutive_ports(WORKERS), free_port()))
    result = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"syntax is ok", result.stderr)
