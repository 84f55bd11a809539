"""End to end: real server processes (the homeserver, ``python -m push_gateway``), matrix-nio
clients, a local WebPush endpoint and a real SMTP server. Bob registers a pusher, goes
offline, Alice sends a DM: the push arrives encrypted and decrypts to the notification of
that event; with an e-mail pusher, the missed-message mail arrives."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import http_ece  # type: ignore[import-untyped]
import httpx
import nio  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02  # type: ignore[import-untyped]

from tests.e2e.conftest import ServerProcess, free_port
from tests.helpers import bind_email
from tests.push_servers import LocalHTTP, SmtpServer, until

PASSWORD = "correct horse battery"
APP_ID = "org.example.web"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    """``python -m push_gateway`` with a WebPush app; yields its notify URL."""
    vapid = Vapid02()
    vapid.generate_keys()
    vapid.save_key(str(tmp_path / "vapid.pem"))
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": port},
                "apps": {
                    APP_ID: {
                        "type": "webpush",
                        "vapid_private_key_file": str(tmp_path / "vapid.pem"),
                        "vapid_contact": "mailto:a@test.org",
                    }
                },
                "outbound": {"allow_addresses": ["127.0.0.1/32"]},
            }
        )
    )
    log = open(tmp_path / "gateway.log", "ab")  # noqa: SIM115 - the child keeps it open
    proc = subprocess.Popen(
        [sys.executable, "-m", "push_gateway", "-c", str(config), "--log-level", "WARNING"],
        stdout=log,
        stderr=log,
    )
    log.close()
    url = f"http://127.0.0.1:{port}/_matrix/push/v1/notify"
    try:
        for _ in range(300):
            try:
                if httpx.get(url, timeout=1).status_code == 405:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "gateway.log").read_text())
            time.sleep(0.05)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


async def _client(server: ServerProcess, name: str) -> nio.AsyncClient:
    client = nio.AsyncClient(
        server.base_url, config=nio.AsyncClientConfig(max_timeouts=3, request_timeout=30)
    )
    response = await client.register(name, PASSWORD, device_name=f"{name}'s phone")
    assert isinstance(response, nio.RegisterResponse), response
    return client


@pytest.fixture
async def pair(
    tmp_path: Path,
) -> AsyncIterator[tuple[ServerProcess, nio.AsyncClient, nio.AsyncClient, SmtpServer]]:
    with SmtpServer() as smtp:
        server = ServerProcess(
            tmp_path,
            None,
            push={"allow_http": True, "poll_interval_ms": 200},
            outbound={"allow_addresses": ["127.0.0.1/32"]},
            presence={"offline_after_ms": 1000},
            email={
                "enabled": True,
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp.port,
                "smtp_security": "none",
                "notif_delay_ms": 300,
            },
        )
        server.start()
        alice = bob = None
        try:
            alice, bob = await _client(server, "alice"), await _client(server, "bob")
            yield server, alice, bob, smtp
        finally:
            for c in (alice, bob):
                if c is not None:
                    await c.close()
            server.stop()


async def _dm(alice: nio.AsyncClient, bob: nio.AsyncClient) -> str:
    created = await alice.room_create(is_direct=True, invite=[bob.user_id])
    assert isinstance(created, nio.RoomCreateResponse), created
    joined = await bob.join(created.room_id)
    assert isinstance(joined, nio.JoinResponse), joined
    return str(created.room_id)


async def _set_pusher(server: ServerProcess, bob: nio.AsyncClient, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{server.base_url}/_matrix/client/v3/pushers/set",
            json=body,
            headers={"Authorization": f"Bearer {bob.access_token}"},
        )
        assert r.status_code == 200, r.text


async def _goes_offline(
    server: ServerProcess, alice: nio.AsyncClient, bob: nio.AsyncClient
) -> None:
    """Bob syncs once (online), then stops: presence turns him offline."""
    await bob.sync(timeout=0, set_presence="online")

    async def offline() -> bool:
        async with httpx.AsyncClient() as http:
            r = await http.get(
                f"{server.base_url}/_matrix/client/v3/presence/{bob.user_id}/status",
                headers={"Authorization": f"Bearer {alice.access_token}"},
            )
        return bool(r.json()["presence"] == "offline")

    for _ in range(200):
        if await offline():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("bob never went offline")


async def test_push_and_mail_to_an_offline_user(
    pair: tuple[ServerProcess, nio.AsyncClient, nio.AsyncClient, SmtpServer], gateway: str
) -> None:
    server, alice, bob, smtp = pair
    browser_key = ec.generate_private_key(ec.SECP256R1())
    p256dh = _b64url(
        browser_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    auth = os.urandom(16)
    pushes: list[bytes] = []

    async def endpoint(request: web.Request) -> web.Response:
        pushes.append(await request.read())
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/wp/bob", endpoint)
    async with LocalHTTP(app) as push_service:
        room_id = await _dm(alice, bob)
        await _set_pusher(
            server,
            bob,
            {
                "kind": "http",
                "app_id": APP_ID,
                "pushkey": p256dh,
                "app_display_name": "Web",
                "device_display_name": "Browser",
                "lang": "en",
                "data": {
                    "url": gateway,
                    "endpoint": f"{push_service.base_url}/wp/bob",
                    "auth": _b64url(auth),
                },
            },
        )
        # An e-mail pusher needs an address bound to the account: the verification mail.
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            await bind_email(
                http, smtp, bob.access_token, bob.user_id, "bob@test.org", password=PASSWORD
            )
        smtp.messages.clear()
        await _set_pusher(
            server,
            bob,
            {
                "kind": "email",
                "app_id": "m.email",
                "pushkey": "bob@test.org",
                "app_display_name": "E-mail",
                "device_display_name": "bob@test.org",
                "lang": "en",
                "data": {},
            },
        )
        await _goes_offline(server, alice, bob)
        sent = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "are you there?"}
        )
        assert isinstance(sent, nio.RoomSendResponse), sent
        await until(lambda: len(pushes) >= 1 and len(smtp.messages) >= 1, timeout_s=30)
    notification = json.loads(
        http_ece.decrypt(pushes[0], private_key=browser_key, auth_secret=auth, version="aes128gcm")
    )
    assert notification["event_id"] == sent.event_id
    assert notification["room_id"] == room_id
    assert notification["sender"] == alice.user_id
    assert notification["content"]["body"] == "are you there?"
    assert notification["unread"] == 1
    envelope, mail = smtp.messages[0]
    assert envelope.rcpt_tos == ["bob@test.org"]
    text = mail.get_body(("plain",))
    assert text is not None and "alice: are you there?" in text.get_content()
