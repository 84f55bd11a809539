"""Three workers (``homeserver run --workers 3``) on PostgreSQL and Redis behind HAProxy,
with config/haproxy.cfg as shipped (ports changed): people on different workers chat, a
WebSocket on worker 1 receives what a long-poll client on worker 3 sent, a long-poll on
worker 2 is woken by a send on worker 1, and matrix-nio through HAProxy (each request to
whichever worker) sees every message once, in order. config/nginx.conf passes ``nginx -t``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nio
import pytest
import yaml
from websockets.asyncio.client import connect

from tests.conftest import in_thread, truncate
from tests.e2e.conftest import START_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3
WS_PATH = "/_matrix/client/unstable/org.homeserver.ws/v1/sync"
V3 = "/_matrix/client/v3"
BIG_TIMELINE = {"room": {"timeline": {"limit": 100}}}
WAIT_S = 20.0  # far below the long-polls' own timeout: only a wake-up answers in time


def _ensure(binary: str, package: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found is not None:
        return found
    try:
        subprocess.run(
            ["apt-get", "install", "-y", package],
            check=True,
            capture_output=True,
            timeout=300,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"{package} is not installed and could not be installed: {e}")
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.skip(f"{package} installed but {binary} is not on the PATH")
    return found


def _consecutive_ports(count: int) -> int:
    """A first port with ``count`` free ones from it."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            held = []
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError("no consecutive free ports")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shipped(name: str, base: int, front: int) -> str:
    """A shipped load-balancer config with this test's ports for the default ones."""
    text = (ROOT / "config" / name).read_text()
    for i in range(WORKERS):
        text = text.replace(f"127.0.0.1:{8008 + i}", f"127.0.0.1:{base + i}")
    return text.replace("127.0.0.1:8080", f"127.0.0.1:{front}")


class Deployment:
    def __init__(self, workdir: Path, database_url: str) -> None:
        self.base = _consecutive_ports(WORKERS)
        self.front = _free_port()
        self.workdir = workdir
        config = {
            "server_name": "localhost",
            "data_dir": str(workdir / "data"),
            "listen": {"host": "127.0.0.1", "port": self.base, "trusted_proxies": ["127.0.0.1"]},
            "database": {"url": database_url, "pool_size": 3},
            "redis": {
                "url": "redis://127.0.0.1:6379/0",
                "channel_prefix": f"test-{secrets.token_hex(4)}:",
            },
            "registration": {"enabled": True},
            "rate_limits": {"enabled": False},
            "auth": {"password_hash_memory_kib": 64, "password_hash_time_cost": 1},
        }
        self.config_path = workdir / "homeserver.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.supervisor: subprocess.Popen[bytes] | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None

    def worker_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base + i - 1}"

    @property
    def front_url(self) -> str:
        return f"http://127.0.0.1:{self.front}"

    def start(self, haproxy: str) -> None:
        log = open(self.workdir / "workers.log", "ab")  # noqa: SIM115 - the child keeps it
        env = {k: v for k, v in os.environ.items() if not k.startswith("HS_")}
        env["HOMESERVER_STRICT_POOL"] = "1"
        self.supervisor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "homeserver",
                "-c",
                str(self.config_path),
                "run",
                "--workers",
                str(WORKERS),
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        for i in range(1, WORKERS + 1):
            self._wait_healthy(self.worker_url(i), deadline)
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(_shipped("haproxy.cfg", self.base, self.front))
        subprocess.run([haproxy, "-c", "-q", "-f", str(cfg)], check=True, timeout=30)
        self.haproxy = subprocess.Popen(
            [haproxy, "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_healthy(self.front_url, deadline)

    def _wait_healthy(self, url: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert self.supervisor is not None
            if self.supervisor.poll() is not None:
                raise RuntimeError(self.log()[-3000:])
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{url} not healthy: {self.log()[-3000:]}")

    def log(self) -> str:
        path = self.workdir / "workers.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        if self.supervisor is not None and self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.supervisor.pid, signal.SIGKILL)
                self.supervisor.wait()


@pytest.fixture
def deployment(tmp_path: Path, pg_database: str) -> Iterator[Deployment]:
    haproxy = _ensure("haproxy", "haproxy")
    in_thread(lambda: truncate(pg_database))
    deploy = Deployment(tmp_path, pg_database)
    try:
        deploy.start(haproxy)
        yield deploy
    finally:
        deploy.stop()


class Person:
    def __init__(self, http: httpx.AsyncClient, user_id: str, token: str) -> None:
        self.http = http
        self.user_id = user_id
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        r = await self.http.request(
            method, f"{V3}{path}", json=body, headers=self.headers, params=params or None
        )
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    async def send(self, room_id: str, body: str) -> str:
        txn = secrets.token_hex(8)
        answer = await self.call(
            "PUT",
            f"/rooms/{room_id}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body},
        )
        return str(answer["event_id"])


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


async def _register(http: httpx.AsyncClient, name: str) -> Person:
    r = await http.post(
        f"{V3}/register",
        json={"username": name, "password": "correct horse", "auth": {"type": "m.login.dummy"}},
    )
    assert r.status_code == 200, r.text
    return Person(http, r.json()["user_id"], r.json()["access_token"])


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
    alice = await _register(http_clients[1], "alice")
    bob = await _register(http_clients[3], "bob")
    carol = await _register(http_clients[2], "carol")
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
    nginx = _ensure("nginx", "nginx")
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(_shipped("nginx.conf", _consecutive_ports(WORKERS), _free_port()))
    result = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"syntax is ok", result.stderr)
