"""Synapse on loopback for interop tests: the pinned release from PyPI in its own virtualenv
(tests/.venv-synapse, shared with the state resolution differential test), serving the
client and federation APIs over TLS with a throwaway CA (tests/tls_helpers.py), trusting
that CA for its own outbound federation requests and allowed to reach loopback addresses.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.servers import SYNAPSE_VENV as BENCH_VENV
from bench.servers import (
    SYNAPSE_VERSION,
    generate_synapse_config,
    set_synapse_log_level,
    stop_process,
    wait_until_serving,
)
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
    "ConnectionError",
    "ProxyError",
)


def synapse_python() -> Path:
    """The virtualenv's python with Synapse ``SYNAPSE_VERSION`` installed (once; test
    workers that ask together wait for the one installing)."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(HERE / ".venv-synapse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _installed()


def _has_synapse(python: Path) -> bool:
    if not python.exists():
        return False
    check = [str(python), "-c", "import synapse; print(synapse.__version__)"]
    done = subprocess.run(check, capture_output=True, text=True, cwd=HERE)
    return done.returncode == 0 and done.stdout.startswith(SYNAPSE_VERSION)


def _installed() -> Path:
    # The benchmarks' Synapse virtualenv, when it exists, has the same pinned version.
    for venv in (VENV, BENCH_VENV):
        if _has_synapse(venv / "bin" / "python"):
            return venv / "bin" / "python"
    python = VENV / "bin" / "python"
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
        config, data_dir = generate_synapse_config(self.python, self.server_name, workdir)
        config.update(self._overrides(tls_dir, data_dir))
        self.config_path.write_text(yaml.safe_dump(config))
        set_synapse_log_level(config, "INFO", workdir / "homeserver.log")

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
        wait_until_serving(
            self._proc, self.base_url, "synapse", self.log_tail, START_TIMEOUT_S, self.verify
        )

    def stop(self) -> None:
        stop_process(self._proc)

    def log_tail(self, chars: int = 4000) -> str:
        path = self.workdir / "homeserver.log"
        return path.read_text()[-chars:] if path.exists() else self.log_path.read_text()[-chars:]
