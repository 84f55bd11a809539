"""A real bridge framework against a real server: mautrix-python's application service
(``mautrix.appservice.AppService``) registers its puppet, sends as it, receives the room's
events and ephemeral events in transactions, pings, and gets every transaction once across a
restart of the homeserver while its queue is held up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from mautrix.appservice import AppService
from mautrix.appservice.state_store.file import FileASStateStore
from mautrix.types import Event, EventType, MessageEvent, TextMessageEventContent

from tests.e2e.conftest import ServerProcess, free_port
from tests.push_servers import until

# mautrix passes aiohttp the event loop, which aiohttp deprecates; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

AS_TOKEN = "mautrix-as-token"
HS_TOKEN = "mautrix-hs-token"
PUPPET = "@bridge_alice:localhost"


class Gate:
    """Lets transactions through to mautrix, or refuses them (503) while closed; records
    every attempt."""

    def __init__(self) -> None:
        self.open = True
        self.attempts: list[tuple[str, int]] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if "/transactions/" not in request.path:
            return await handler(request)  # type: ignore[no-any-return]
        txn_id = request.path.rsplit("/", 1)[1]
        if not self.open:
            self.attempts.append((txn_id, 503))
            return web.json_response({"errcode": "M_UNKNOWN"}, status=503)
        response: web.StreamResponse = await handler(request)
        self.attempts.append((txn_id, response.status))
        return response


async def _json(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_mautrix_bridge(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    database_url = None
    if backend == "postgresql":
        from tests.conftest import truncate

        database_url = request.getfixturevalue("pg_database")
        await truncate(database_url)
    bridge_port = free_port()
    registration = {
        "id": "mautrix-test",
        "url": f"http://127.0.0.1:{bridge_port}",
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "bridgebot",
        "rate_limited": False,
        "receive_ephemeral": True,
        "namespaces": {"users": [{"exclusive": True, "regex": "@bridge_.*:localhost"}]},
    }
    (tmp_path / "bridge.yaml").write_text(yaml.safe_dump(registration))
    server = ServerProcess(
        tmp_path,
        database_url,
        app_service_config_files=[str(tmp_path / "bridge.yaml")],
        appservice={"retry_initial_ms": 100, "retry_max_ms": 500, "poll_interval_ms": 500},
    )
    gate = Gate()
    appservice = AppService(
        server=server.base_url,
        domain="localhost",
        as_token=AS_TOKEN,
        hs_token=HS_TOKEN,
        bot_localpart="bridgebot",
        id="mautrix-test",
        loop=asyncio.get_running_loop(),
        state_store=FileASStateStore(path=str(tmp_path / "mx-state.json"), binary=False),
        aiohttp_params={"middlewares": [gate.middleware]},
        ephemeral_events=True,
    )
    received: list[Event] = []

    @appservice.matrix_event_handler
    async def on_event(event: Event) -> None:
        received.append(event)

    def messages(body: str) -> list[MessageEvent]:
        return [
            e
            for e in received
            if isinstance(e, MessageEvent)
            and isinstance(e.content, TextMessageEventContent)
            and e.content.body == body
        ]

    server.start()
    await appservice.start(host="127.0.0.1", port=bridge_port)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as human:
            # A person on the server, in a public room.
            r = await human.post(
                "/_matrix/client/v3/register",
                json={
                    "username": "carol",
                    "password": "correct horse battery",
                    "auth": {"type": "m.login.dummy"},
                },
            )
            token = (await _json(r))["access_token"]
            h = {"Authorization": f"Bearer {token}"}
            r = await human.post(
                "/_matrix/client/v3/createRoom", headers=h, json={"preset": "public_chat"}
            )
            room_id = (await _json(r))["room_id"]

            # The bridge creates its puppet (m.login.application_service), joins as it and
            # sends as it (user_id masquerading).
            assert await appservice.ping_self("first") >= 0
            puppet = appservice.intent.user(PUPPET)
            await puppet.ensure_registered()
            await puppet.ensure_joined(room_id)
            await puppet.send_text(room_id, "hello from the bridge")
            r = await human.get(
                f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=10", headers=h
            )
            chunk = (await _json(r))["chunk"]
            sent = [e for e in chunk if e["type"] == "m.room.message"]
            assert sent[0]["sender"] == PUPPET
            assert sent[0]["content"]["body"] == "hello from the bridge"

            # Transactions: the person's message and typing reach the bridge.
            r = await human.put(
                f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                headers=h,
                json={"msgtype": "m.text", "body": "hello bridge"},
            )
            await _json(r)
            await until(lambda: len(messages("hello bridge")) == 1, timeout_s=30)
            r = await human.put(
                f"/_matrix/client/v3/rooms/{room_id}/typing/@carol:localhost",
                headers=h,
                json={"typing": True, "timeout": 30000},
            )
            await _json(r)

            def typing() -> list[Event]:
                return [e for e in received if e.type == EventType.TYPING]

            await until(lambda: bool(typing()), timeout_s=30)
            assert typing()[-1].room_id == room_id
            assert "@carol:localhost" in typing()[-1].content.user_ids

            # The bridge stops taking transactions; the server queues and retries, and is
            # restarted (SIGTERM) with its queue held up.
            gate.open = False
            bodies = [f"queued {i}" for i in range(5)]
            for i, body in enumerate(bodies):
                r = await human.put(
                    f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/q{i}",
                    headers=h,
                    json={"msgtype": "m.text", "body": body},
                )
                await _json(r)
            await until(lambda: any(status == 503 for _, status in gate.attempts), timeout_s=30)
            assert server.terminate_and_wait(30) is not None
            server.start()
            gate.open = True
            r = await human.put(
                f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/after",
                headers=h,
                json={"msgtype": "m.text", "body": "after the restart"},
            )
            await _json(r)
            await until(
                lambda: all(len(messages(b)) >= 1 for b in [*bodies, "after the restart"]),
                timeout_s=60,
            )
            await asyncio.sleep(1)  # anything sent twice would come now
            for body in [*bodies, "after the restart", "hello bridge"]:
                assert len(messages(body)) == 1, body
            # Every transaction taken once, in order of its number.
            taken = [int(txn_id) for txn_id, status in gate.attempts if status == 200]
            assert taken == sorted(set(taken))
            assert await appservice.ping_self("last") >= 0
    finally:
        await appservice.stop()
        server.stop()
