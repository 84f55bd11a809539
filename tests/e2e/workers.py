"""``homeserver run --workers N`` on PostgreSQL and Redis behind HAProxy with
config/haproxy.cfg as shipped (ports changed), for the end-to-end tests of issue 21."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import START_TIMEOUT_S, free_port, run_command

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_WORKERS = 3  # the servers config/haproxy.cfg and config/nginx.conf name
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
V3 = "/_matrix/client/v3"
WS_PATH = "/_matrix/client/unstable/org.homeserver.ws/v1/sync"


def ensure_binary(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` if missing (skip if that
    fails)."""
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


def consecutive_ports(count: int) -> int:
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


def shipped(name: str, base: int, front: int) -> str:
    """A shipped load-balancer config with this test's ports for the default ones."""
    text = (ROOT / "config" / name).read_text()
    for i in range(SHIPPED_WORKERS):
        text = text.replace(f"127.0.0.1:{8008 + i}", f"127.0.0.1:{base + i}")
    return text.replace("127.0.0.1:8080", f"127.0.0.1:{front}")


class Deployment:
    """Three workers under one supervisor and HAProxy in front. ``config`` adds to the
    homeserver config (push, outbound, ...); ``redis_url`` may name a Redis of the test's
    own."""

    workers = SHIPPED_WORKERS

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        redis_url: str = DEFAULT_REDIS_URL,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.base = consecutive_ports(self.workers)
        self.front = free_port()
        self.workdir = workdir
        data: dict[str, Any] = {
            "server_name": "localhost",
            "data_dir": str(workdir / "data"),
            "listen": {"host": "127.0.0.1", "port": self.base, "trusted_proxies": ["127.0.0.1"]},
            "database": {"url": database_url, "pool_size": 3},
            "redis": {"url": redis_url, "channel_prefix": f"test-{secrets.token_hex(4)}:"},
            "registration": {"enabled": True},
            "rate_limits": {"enabled": False},
            "auth": {"password_hash_memory_kib": 64, "password_hash_time_cost": 1},
            **(config or {}),
        }
        self.config_path = workdir / "homeserver.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
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
            run_command(self.config_path, "--workers", str(self.workers)),
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.wait_all_healthy(START_TIMEOUT_S)
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(shipped("haproxy.cfg", self.base, self.front))
        subprocess.run([haproxy, "-c", "-q", "-f", str(cfg)], check=True, timeout=30)
        self.haproxy = subprocess.Popen(
            [haproxy, "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_healthy(self.front_url, time.monotonic() + START_TIMEOUT_S)

    def wait_all_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for i in range(1, self.workers + 1):
            self.wait_healthy(self.worker_url(i), deadline)

    def wait_healthy(self, url: str, deadline: float) -> None:
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

    def worker_pids(self) -> dict[str, int]:
        """The supervisor's worker processes now, by worker name (``main-1`` ...)."""
        assert self.supervisor is not None
        pid = self.supervisor.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        named = {}
        for child in children:
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue  # exited meanwhile
            for item in environ:
                if item.startswith(b"HS_WORKER__NAME="):
                    named[item.split(b"=", 1)[1].decode()] = int(child)
        return named

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


async def register(http: httpx.AsyncClient, name: str) -> Person:
    r = await http.post(
        f"{V3}/register",
        json={"username": name, "password": "correct horse", "auth": {"type": "m.login.dummy"}},
    )
    assert r.status_code == 200, r.text
    return Person(http, r.json()["user_id"], r.json()["access_token"])
