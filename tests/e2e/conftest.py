"""Real server processes: ``homeserver run`` under uvicorn on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bench.servers import stop_process, wait_until_serving

START_TIMEOUT_S = 90  # a loaded 2-core machine starting several servers at once


def run_command(config_path: Path, *args: str) -> list[str]:
    """``homeserver run`` of this config at WARNING, with ``args`` after ``run``."""
    cmd = [sys.executable, "-m", "homeserver", "-c", str(config_path), "run", *args]
    return [*cmd, "--log-level", "WARNING"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, workdir: Path, database_url: str | None, **config: object) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        data: dict[str, object] = {
            "server_name": "localhost",
            "data_dir": str(workdir / "data"),
            "listen": {"host": "127.0.0.1", "port": self.port},
            "registration": {"enabled": True},
            "rate_limits": {"enabled": False},
            "auth": {"password_hash_memory_kib": 64, "password_hash_time_cost": 1},
        }
        if database_url is not None:
            # Small pools: test servers on several xdist workers share PostgreSQL's 100
            # connections. A test about pools passes its own database section.
            data["database"] = {"url": database_url, "pool_size": 3}
        listen = config.pop("listen", {})
        assert isinstance(listen, dict)
        data.update(config)
        # A config may choose its own port and serve TLS (federation tests), or add to the
        # default listener (a shut-down timeout).
        listen = {"host": "127.0.0.1", "port": self.port, **listen}
        data["listen"] = listen
        self.port = int(listen["port"])
        scheme = "https" if listen.get("tls_certificate_path") else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = True  # what the start-up probe trusts
        self.config_path = workdir / "homeserver.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        self.log_path = workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        env = {k: v for k, v in os.environ.items() if not k.startswith("HS_")}
        self._proc = subprocess.Popen(
            run_command(self.config_path),
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        wait_until_serving(
            self._proc,
            self.base_url,
            "server",
            lambda: self.log_path.read_text()[-2000:],
            START_TIMEOUT_S,
            self.verify,
        )

    def kill(self) -> None:
        """kill -9: no shutdown of any kind."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.wait()

    def terminate_and_wait(self, timeout_s: float) -> int | None:
        """SIGTERM; the exit code, or None (and SIGKILL) if it is still running after
        ``timeout_s``."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGTERM)
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def stop(self) -> None:
        stop_process(self._proc, timeout_s=10)


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    database_url = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("pg_database")
        from tests.conftest import in_thread, truncate

        in_thread(lambda: truncate(database_url))
    proc = ServerProcess(tmp_path, database_url)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
