"""Synapse on loopback for interop tests: the pinned release from PyPI in its own virtualenv
(tests/.venv-synapse, shared with the state resolution differential test), serving the
client and federation APIs over TLS with a throwaway CA (tests/tls_helpers.py), trusting
that CA for its own outbound federation requests and allowed to reach loopback addresses.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.servers import SYNAPSE_VERSION
from homeserver.federation.client import ssl_context

HERE = Path(__file__).parent
VENV = HERE / ".venv-synapse"
START_TIMEOUT_S = 90
LOOPBACK_IPS = ["127.0.0.1", "::1"]
# pip's words for "could not reach the index": only then is the test skipped.
OFFLINE_MARKERS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ProxyError",
)


def synapse_python() -> Path:
    """The virtualenv's python with Synapse ``SYNAPSE_VERSION`` installed (once; test
    workers that ask together wait for the one installing)."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(HERE / ".venv-synapse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _installed()


def _installed() -> Path:
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import synapse; print(synapse.__version__)"]
    if python.exists():
        done = subprocess.run(check, capture_output=True, text=True, cwd=HERE)
        if done.returncode == 0 and done.stdout.startswith(SYNAPSE_VERSION):
            return python
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"matrix-synapse=={SYNAPSE_VERSION}"],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        if any(marker in install.stderr for marker in OFFLINE_MARKERS):
            pytest.skip(f"matrix-synapse=={SYNAPSE_VERSION} cannot be installed: no network")
        raise RuntimeError(f"installing matrix-synapse failed:\n{install.stderr[-4000:]}")
    return python


class SynapseProcess:
    """One Synapse, named ``localhost:<port>``, on SQLite, TLS on that port."""

    def __init__(self, workdir: Path, port: int, tls_dir: Path) -> None:
        self.python = synapse_python()
        self.port = port
        self.server_name = f"localhost:{port}"
        self.base_url = f"https://127.0.0.1:{port}"
        self.workdir = workdir
        self.config_path = workdir / "homeserver.yaml"
        self.log_path = workdir / "synapse.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.verify = ssl_context(str(tls_dir / "ca.pem"))
        workdir.mkdir(parents=True, exist_ok=True)
        data_dir = workdir / "data"
        data_dir.mkdir(exist_ok=True)
        subprocess.run(
            [
                str(self.python),
                "-m",
                "synapse.app.homeserver",
                "--server-name",
                self.server_name,
                "--config-path",
                str(self.config_path),
                "--generate-config",
                "--report-stats",
                "no",
                "--config-directory",
                str(workdir),
                "--data-directory",
                str(data_dir),
            ],
            check=True,
            capture_output=True,
            cwd=workdir,
        )
        config = yaml.safe_load(self.config_path.read_text())
        config.update(self._overrides(tls_dir, data_dir))
        self.config_path.write_text(yaml.safe_dump(config))
        log_config = Path(config["log_config"])
        logging = yaml.safe_load(log_config.read_text())
        logging["root"]["level"] = "INFO"
        for handler in logging.get("handlers", {}).values():
            if "filename" in handler:
                handler["filename"] = str(workdir / "homeserver.log")
        log_config.write_text(yaml.safe_dump(logging))

    def _overrides(self, tls_dir: Path, data_dir: Path) -> dict[str, Any]:
        return {
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["client", "federation", "keys"], "compress": False}],
                }
            ],
            "tls_certificate_path": str(tls_dir / "cert.pem"),
            "tls_private_key_path": str(tls_dir / "key.pem"),
            # Its outbound federation trusts our test CA, and may reach loopback (blocked by
            # default as a private range).
            "federation_custom_ca_list": [str(tls_dir / "ca.pem")],
            "federation_verify_certificates": True,
            "ip_range_whitelist": LOOPBACK_IPS,
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "report_stats": False,
            "trusted_key_servers": [],  # no network beyond loopback
            "suppress_key_server_warning": True,
            "url_preview_enabled": False,
            "enable_metrics": False,
            "presence": {"enabled": False},
            "media_store_path": str(data_dir / "media_store"),
            "rc_message": {"per_second": 1000, "burst_count": 1000},
            "rc_registration": {"per_second": 1000, "burst_count": 1000},
            "rc_login": {
                "address": {"per_second": 1000, "burst_count": 1000},
                "account": {"per_second": 1000, "burst_count": 1000},
                "failed_attempts": {"per_second": 1000, "burst_count": 1000},
            },
            "rc_joins": {
                "local": {"per_second": 1000, "burst_count": 1000},
                "remote": {"per_second": 1000, "burst_count": 1000},
            },
            "rc_federation": {"window_size": 1000, "sleep_limit": 1000, "reject_limit": 1000},
        }

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")}
        self._proc = subprocess.Popen(
            [
                str(self.python),
                "-m",
                "synapse.app.homeserver",
                "--config-path",
                str(self.config_path),
            ],
            stdout=log,
            stderr=log,
            env=env,
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"synapse exited: {self.log_path.read_text()[-3000:]}")
            try:
                probe = f"{self.base_url}/_matrix/client/versions"
                if httpx.get(probe, timeout=1, verify=self.verify).is_success:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"synapse did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        os.kill(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def log_tail(self, chars: int = 4000) -> str:
        path = self.workdir / "homeserver.log"
        return path.read_text()[-chars:] if path.exists() else self.log_path.read_text()[-chars:]
