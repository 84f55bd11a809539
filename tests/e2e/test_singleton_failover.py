"""Two real worker processes on one PostgreSQL database (issue 21): kill -9 the one holding
the singleton jobs, and the other takes them over within 10 s and sends the push that was
waiting, once; SIGTERM a worker, and it answers its long-polls with a token to resume from,
gives its leases up at once (the other takes them within a standby period) and exits."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from homeserver.storage.database import Database
from homeserver.storage.leases import JobLeaseStore
from tests.conftest import in_thread, truncate
from tests.e2e.conftest import ServerProcess
from tests.push_servers import FakeGateway, until, until_async

CS = "/_matrix/client/v3"
TAKEOVER_S = 10.0
SHUTDOWN_TIMEOUT_MS = 3000


def _worker(tmp_path: Path, pg_url: str, name: str, prefix: str) -> ServerProcess:
    workdir = tmp_path / name
    workdir.mkdir()
    return ServerProcess(
        workdir,
        pg_url,
        data_dir=str(tmp_path / "data"),  # one signing key for both
        worker={"name": name},
        # Several workers wake each other through Redis (a channel of this test's own).
        redis={"url": "redis://127.0.0.1:6379/0", "channel_prefix": prefix},
        # Bob is online (he syncs): pushed all the same.
        push={"allow_http": True, "poll_interval_ms": 500, "only_when_offline": False},
        outbound={"allow_addresses": ["127.0.0.1/32"]},
        presence={"enabled": True},
        listen={"shutdown_timeout_ms": SHUTDOWN_TIMEOUT_MS},
    )


async def _holders(db: Database) -> set[str]:
    """The workers holding a lease now (by name)."""
    return {owner.split(":", 1)[0] for owner in (await JobLeaseStore(db).holders()).values()}


async def _call(
    client: httpx.AsyncClient, method: str, path: str, token: str | None = None, **kw: Any
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = await client.request(method, path, headers=headers, **kw)
    assert r.status_code == 200, r.text
    return r.json()


async def _register(client: httpx.AsyncClient, name: str) -> tuple[str, str]:
    body = await _call(
        client,
        "POST",
        f"{CS}/register",
        json={"username": name, "password": "a long password", "auth": {"type": "m.login.dummy"}},
    )
    return body["user_id"], body["access_token"]


@pytest.mark.timeout(300)
async def test_kill_the_singleton_holder_then_sigterm_the_other(
    tmp_path: Path, pg_database: str
) -> None:
    in_thread(lambda: truncate(pg_database))
    db = Database(pg_database, pool_size=1)
    prefix = f"test-{secrets.token_hex(4)}:"
    a, b = _worker(tmp_path, pg_database, "a", prefix), _worker(tmp_path, pg_database, "b", prefix)
    async with FakeGateway() as gateway:
        a.start()
        try:
            await until_async(lambda: _holders_are(db, {"a"}))
            b.start()
            async with (
                httpx.AsyncClient(base_url=a.base_url, timeout=60) as on_a,
                httpx.AsyncClient(base_url=b.base_url, timeout=60) as on_b,
            ):
                alice, alice_token = await _register(on_a, "alice")
                bob, bob_token = await _register(on_b, "bob")
                await _call(
                    on_b,
                    "POST",
                    f"{CS}/pushers/set",
                    bob_token,
                    json={
                        "kind": "http",
                        "app_id": "org.example.app",
                        "pushkey": "bob-phone",
                        "app_display_name": "App",
                        "device_display_name": "Phone",
                        "lang": "en",
                        "data": {"url": gateway.url},
                    },
                )
                room = await _call(
                    on_a,
                    "POST",
                    f"{CS}/createRoom",
                    alice_token,
                    json={"preset": "private_chat", "invite": [bob], "is_direct": True},
                )
                room_id = room["room_id"]
                await _call(on_b, "POST", f"{CS}/join/{room_id}", bob_token, json={})
                await until(lambda: len(gateway.received) >= 1, timeout_s=TAKEOVER_S)
                assert await _holders(db) == {"a"}  # B stood by all along

                # kill -9 the holder; a message sent meanwhile waits for the takeover.
                a.kill()
                killed = time.monotonic()
                sent = await _call(
                    on_b,
                    "PUT",
                    f"{CS}/rooms/{room_id}/send/m.room.message/m1",
                    alice_token,
                    json={"msgtype": "m.text", "body": "are you there?"},
                )
                m1 = sent["event_id"]
                await until(lambda: m1 in _pushed(gateway), timeout_s=TAKEOVER_S + 5)
                took = time.monotonic() - killed
                print(f"kill -9 to the waiting push sent by the other worker: {took:.2f} s")
                assert took < TAKEOVER_S
                assert await _holders(db) == {"b"}

                # A comes back and stands by; B is stopped with a long-poll waiting.
                a.start()
                since = (await _call(on_b, "GET", f"{CS}/sync", bob_token))["next_batch"]
                waiting = asyncio.create_task(
                    on_b.get(
                        f"{CS}/sync",
                        params={"since": since, "timeout": 30_000},
                        headers={"Authorization": f"Bearer {bob_token}"},
                    )
                )
                await asyncio.sleep(0.5)
                assert not waiting.done()
                stopped = time.monotonic()
                exit_code = await asyncio.to_thread(b.terminate_and_wait, 15)
                # uvicorn re-raises the signal once it has shut down cleanly: killed by
                # SIGTERM, not by the watchdog (1) nor stuck (None).
                assert exit_code == -signal.SIGTERM
                took = time.monotonic() - stopped
                print(f"SIGTERM to exit: {took:.2f} s")
                assert took < SHUTDOWN_TIMEOUT_MS / 1000 + 3
                answer = await asyncio.wait_for(waiting, 5)
                assert answer.status_code == 200
                resume = answer.json()["next_batch"]  # a token to resume from, lossless
                # Sent after B stopped (with Redis, a message sent while B was up would have
                # woken B's long-poll instead of its shutdown answering it).
                m2 = (
                    await _call(
                        on_a,
                        "PUT",
                        f"{CS}/rooms/{room_id}/send/m.room.message/m2",
                        alice_token,
                        json={"msgtype": "m.text", "body": "hello again"},
                    )
                )["event_id"]
                # B gave its leases up: A takes them without waiting for them to lapse.
                await until_async(lambda: _holders_are(db, {"a"}), timeout_s=5)
                print(f"SIGTERM to leases held by the other: {time.monotonic() - stopped:.2f} s")
                synced = await _call(
                    on_a,
                    "GET",
                    f"{CS}/sync",
                    bob_token,
                    params={"since": resume, "timeout": 10_000},
                )
                timeline = synced["rooms"]["join"][room_id]["timeline"]["events"]
                assert m2 in [e["event_id"] for e in timeline]
                await until(lambda: m2 in _pushed(gateway), timeout_s=TAKEOVER_S)
                await asyncio.sleep(1.5)  # a few more rounds of A's pusher
                counts = Counter(_pushed(gateway))
                assert counts[m1] == 1 and counts[m2] == 1, counts
        finally:
            a.stop()
            b.stop()
            await db.close()


def _pushed(gateway: FakeGateway) -> list[str]:
    return [n["notification"].get("event_id") for n in gateway.received]


async def _holders_are(db: Database, expected: set[str]) -> bool:
    return await _holders(db) == expected
