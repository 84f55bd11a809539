"""The servers under test: ours and Synapse, configured and started here, stopped by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.progress import log

REPO = Path(__file__).resolve().parent.parent
SYNAPSE_VERSION = "1.163.2"
SYNAPSE_VENV = REPO / "bench" / ".venv-synapse"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
START_TIMEOUT_S = 120
# The same upload limit on both (Synapse's default is 50 MiB, ours 100 MiB): room for the
# media scenario's 100 MiB file.
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
# Rate limits as good as off: the benchmark measures the servers, not their limiters.
UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}
SYNAPSE_RATE_LIMITS: dict[str, Any] = {
    "rc_message": UNLIMITED,
    "rc_registration": UNLIMITED,
    "rc_registration_token_validity": UNLIMITED,
    "rc_login": {"address": UNLIMITED, "account": UNLIMITED, "failed_attempts": UNLIMITED},
    "rc_admin_redaction": UNLIMITED,
    "rc_joins": {"local": UNLIMITED, "remote": UNLIMITED},
    "rc_joins_per_room": UNLIMITED,
    "rc_key_requests": UNLIMITED,
    "rc_3pid_validation": UNLIMITED,
    "rc_invites": {"per_room": UNLIMITED, "per_user": UNLIMITED, "per_issuer": UNLIMITED},
    "rc_third_party_invite": UNLIMITED,
    "rc_media_create": UNLIMITED,
    "rc_presence": {"per_user": UNLIMITED},
    "rc_delayed_event_mgmt": UNLIMITED,
    "rc_room_creation": UNLIMITED,
    "rc_reports": UNLIMITED,
    "rc_user_directory": UNLIMITED,
    "rc_profile": UNLIMITED,
    "rc_federation": {
        "window_size": 1000,
        "sleep_limit": 1_000_000,
        "sleep_delay": 0,
        "reject_limit": 1_000_000,
        "concurrent": 1_000_000,
    },
}


# The scale scenarios (bench/scenario_scale.py) register thousands of users through an
# application service: no password hashing, so set-up is affordable on both servers.
# Registered on both only when such a scenario runs; it has no URL, so it receives nothing.
APPSERVICE_TOKEN = "bench-as-token-" + "a" * 16
APPSERVICE_USER_PREFIX = "bas_"


def write_appservice(workdir: Path) -> Path:
    """The application service registration file of the scale scenarios, in ``workdir``."""
    path = workdir / "bench-appservice.yaml"
    registration = {
        "id": "bench",
        "url": None,
        "as_token": APPSERVICE_TOKEN,
        "hs_token": "bench-hs-token-" + "b" * 16,
        "sender_localpart": "bench_as",
        "rate_limited": False,
        "namespaces": {
            "users": [{"exclusive": True, "regex": f"@{APPSERVICE_USER_PREFIX}.*"}],
            "aliases": [],
            "rooms": [],
        },
    }
    path.write_text(yaml.safe_dump(registration))
    return path


def wait_until_serving(
    proc: subprocess.Popen[bytes],
    base_url: str,
    name: str,
    log_tail: Callable[[], str],
    timeout_s: float = START_TIMEOUT_S,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Wait until a server just started answers ``/versions``; raise (with its log's tail)
    if it exits first, or stop it and raise if it does not answer within ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log_tail()}")
        try:
            probe = f"{base_url}/_matrix/client/versions"
            if httpx.get(probe, timeout=2, verify=verify).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise RuntimeError(f"{name} did not start in {timeout_s} s: {log_tail()}")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 15) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server to benchmark: a base URL and, when known, the PID to read /proc of."""

    def __init__(self, name: str, base_url: str, pid: int | None = None) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.pid = pid
        self.version = "unknown"

    def start(self) -> None:
        """Nothing to start for a server that is already running."""

    def stop(self) -> None:
        """Nothing to stop for a server that is already running."""


class ManagedServer(Server):
    """A server process started here and stopped by its PID, whatever happens."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.port = free_port()
        super().__init__(name, f"http://127.0.0.1:{self.port}")
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.cpus: set[int] | None = None  # the cores it runs on (all its threads)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("HS_")}

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            cpus = self.cpus
            self._proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=self.environment(),
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        self.pid = self._proc.pid
        log(f"{self.name}: started as PID {self.pid} on {self.base_url}")
        wait_until_serving(self._proc, self.base_url, self.name, self._log_tail)

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        stop_process(self._proc)
        log(f"{self.name}: PID {self._proc.pid} stopped")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


class OurServer(ManagedServer):
    """``python -m homeserver -c CONFIG run`` from the repo's venv, default password hashing.

    ``source`` is the tree whose code runs (``PYTHONPATH``): this checkout, or a worktree of
    another revision (``--baseline``) run on the same venv under another ``name``.
    """

    def __init__(
        self,
        workdir: Path,
        database_url: str | None,
        presence: bool,
        *,
        name: str = "ours",
        source: Path = REPO,
        appservice: bool = False,
    ) -> None:
        super().__init__(name, workdir)
        self.source = source
        config: dict[str, Any] = {
            "server_name": "localhost",
            "data_dir": str(workdir / "data"),
            "listen": {"host": "127.0.0.1", "port": self.port},
            "registration": {"enabled": True},
            "rate_limits": {"enabled": False},
            "media": {"max_upload_bytes": MAX_UPLOAD_BYTES},
        }
        # Presence on both servers or on neither; a version without presence has no key.
        if _has_presence(source):
            config["presence"] = {"enabled": presence}
        elif presence:
            raise RuntimeError(f"the server in {source} has no presence")
        if database_url is not None:
            config["database"] = {"url": database_url}
        if appservice:
            workdir.mkdir(parents=True, exist_ok=True)
            config["app_service_config_files"] = [str(write_appservice(workdir))]
        self.config_path = workdir / "homeserver.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.version = _git_describe(source)
        # ``-m bench.querylog LOG`` to log every SQL statement (``--count-queries``); with
        # ``source`` first on the path, the module of that tree.
        self.wrapper_module = ["-m", "homeserver"]

    def command(self) -> list[str]:
        return [
            sys.executable,
            *self.wrapper_module,
            "-c",
            str(self.config_path),
            "run",
            "--log-level",
            "WARNING",
        ]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = str(self.source)
        return env


def _has_presence(source: Path) -> bool:
    """Whether the config of the server in ``source`` has a presence section (read as text:
    another revision's modules cannot be imported beside this one's)."""
    for path in ("homeserver/core/config.py", "homeserver/config.py"):
        config = source / path
        if config.exists():
            return "presence: PresenceConfig" in config.read_text()
    return False


class BaselineTree:
    """A detached ``git worktree`` of another revision, for ``--baseline REV``: its server
    runs on this venv with its tree on ``PYTHONPATH``; removed afterwards."""

    def __init__(self, revision: str, parent: Path) -> None:
        self.revision = revision
        self.path = parent / "baseline"
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--verify", f"{revision}^{{commit}}"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ValueError(f"--baseline: no commit {revision!r} in {REPO}")
        self.commit = done.stdout.strip()

    def create(self) -> None:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(self.path), self.commit],
            check=True,
            capture_output=True,
        )
        log(f"baseline: {self.commit[:10]} checked out in {self.path}")

    def remove(self) -> None:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.path)],
            capture_output=True,
        )


class SynapseServer(ManagedServer):
    """Synapse from its own venv, with a config generated by Synapse and edited here."""

    def __init__(
        self, workdir: Path, database: str | None, presence: bool, appservice: bool = False
    ) -> None:
        super().__init__("synapse", workdir)
        self.version = SYNAPSE_VERSION
        ensure_synapse_venv()
        self.config_path = workdir / "homeserver.yaml"
        config, data_dir = generate_synapse_config(
            SYNAPSE_VENV / "bin" / "python", "localhost", workdir
        )
        config.update(synapse_overrides(self.port, database, presence, data_dir / "media_store"))
        if appservice:
            config["app_service_config_files"] = [str(write_appservice(workdir))]
        self.config_path.write_text(yaml.safe_dump(config))
        # Same log level as ours (WARNING): INFO would log every request.
        set_synapse_log_level(config, "WARNING")

    def command(self) -> list[str]:
        return [
            str(SYNAPSE_VENV / "bin" / "python"),
            "-m",
            "synapse.app.homeserver",
            "--config-path",
            str(self.config_path),
        ]


def generate_synapse_config(
    python: Path, server_name: str, workdir: Path
) -> tuple[dict[str, Any], Path]:
    """Synapse's own generated ``homeserver.yaml`` in ``workdir`` (with its signing key and
    log config), read back for the caller to edit and write; and its data directory."""
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "homeserver.yaml"
    subprocess.run(
        [
            str(python),
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            server_name,
            "--config-path",
            str(config_path),
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
    return yaml.safe_load(config_path.read_text()), data_dir


def set_synapse_log_level(config: dict[str, Any], level: str, log_file: Path | None = None) -> None:
    """Every logger of a generated Synapse config at ``level``; its file handler (if any)
    writing to ``log_file`` when given."""
    log_config = Path(config["log_config"])
    logging_config = yaml.safe_load(log_config.read_text())
    logging_config["root"]["level"] = level
    for logger in logging_config.get("loggers", {}).values():
        logger["level"] = level
    if log_file is not None:
        for handler in logging_config.get("handlers", {}).values():
            if "filename" in handler:
                handler["filename"] = str(log_file)
    log_config.write_text(yaml.safe_dump(logging_config))


def synapse_overrides(
    port: int, database: str | None, presence: bool, media_store: Path
) -> dict[str, Any]:
    """The keys changed in Synapse's generated config, to match our server's benchmark config."""
    from homeserver.core.config import ThumbnailsConfig

    # Our default thumbnail sizes, made on upload by both (Synapse's defaults are the same).
    thumbnail_sizes = [size.model_dump() for size in ThumbnailsConfig().sizes]
    overrides: dict[str, Any] = {
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "report_stats": False,
        "presence": {"enabled": presence},  # the same on both servers
        "trusted_key_servers": [],  # no network beyond loopback
        "suppress_key_server_warning": True,
        "url_preview_enabled": False,
        "enable_metrics": False,
        "media_store_path": str(media_store),
        "max_upload_size": MAX_UPLOAD_BYTES,
        "thumbnail_sizes": thumbnail_sizes,
        "dynamic_thumbnails": False,  # its default: only the sizes above, made on upload
        "enable_authenticated_media": True,  # its default; the scenario downloads through it
        **SYNAPSE_RATE_LIMITS,
    }
    if database is not None:
        overrides["database"] = {
            "name": "psycopg2",
            "args": {
                "user": PG_USER,
                "host": PG_HOST,
                "port": PG_PORT,
                "database": database,
                "cp_min": 5,
                "cp_max": 10,
            },
        }
    return overrides


def ensure_synapse_venv() -> None:
    python = SYNAPSE_VENV / "bin" / "python"
    check = [str(python), "-c", "import synapse, psycopg2; print(synapse.__version__)"]
    if python.exists():
        done = subprocess.run(check, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.startswith(SYNAPSE_VERSION):
            return
    log(f"installing matrix-synapse=={SYNAPSE_VERSION} into {SYNAPSE_VENV} (once)")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(SYNAPSE_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"matrix-synapse[postgres]=={SYNAPSE_VERSION}"],
        check=True,
    )


def _git_describe(source: Path = REPO) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


class PostgresDatabase:
    """A fresh database on the local PostgreSQL for one server, dropped afterwards."""

    def __init__(self, label: str) -> None:
        self.name = f"bench_{label}_{uuid.uuid4().hex[:8]}"

    @property
    def asyncpg_url(self) -> str:
        return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"

    def create(self) -> None:
        # Synapse requires C collation; ours gets the same database for a like-for-like run.
        _pg(
            f"CREATE DATABASE {self.name} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
        log(f"postgresql: created database {self.name}")

    def drop(self) -> None:
        _pg(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        log(f"postgresql: dropped database {self.name}")


def _pg(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())
