"""A Redis server of a test's own (not the machine's 6379), so the test can stop it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """``redis-server`` on 127.0.0.1:``port``, no persistence; the caller stops it."""
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is installed on this machine (INFRA.md)"
    return subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
