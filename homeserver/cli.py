"""The ``homeserver`` command: run, generate-config, migrate, register-user."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import getpass
import math
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn

from homeserver.core.config import ConfigError, HomeserverConfig, default_config_yaml, load_config
from homeserver.core.errors import MatrixError

DEFAULT_CONFIG = "homeserver.yaml"


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("HS_CONFIG", DEFAULT_CONFIG))


def _load(path: Path, *, create: bool) -> HomeserverConfig:
    if not path.exists():
        if not create:
            raise ConfigError(f"no config at {path}; run `homeserver generate-config` first")
        path.write_text(default_config_yaml())
        print(f"Generated {path} (server name localhost, SQLite in ./data)", file=sys.stderr)
    return load_config(path)


def cmd_generate_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    if path.exists() and not args.force:
        print(f"{path} exists; pass --force to overwrite", file=sys.stderr)
        return 1
    path.write_text(default_config_yaml(server_name=args.server_name, data_dir=args.data_dir))
    print(f"Wrote {path}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from homeserver.storage.database import Database
    from homeserver.storage.migrate import upgrade_head

    config = _load(_config_path(args), create=False)
    config.data_path.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        db = Database(config.database_url)
        try:
            await upgrade_head(db.engine)
        finally:
            await db.close()

    asyncio.run(run())
    print("Database is at the newest schema")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from homeserver.core.logging import configure_logging
    from homeserver.lifecycle import asgi_app
    from homeserver.web.http_protocol import MAX_HEADER_BYTES, MAX_TARGET_BYTES, http_protocol_class

    config = _load(_config_path(args), create=True)
    problem = several_workers_problem(config, args.workers)
    if problem is not None:
        raise ConfigError(problem)
    if args.workers > 1:
        return _supervise(args, config)
    # Unusable application service registrations stop the start-up here, with the file named.
    from homeserver.appservice.registration import load_registrations

    load_registrations(config.app_service_config_files, config.server_name)
    configure_logging(args.log_level)
    _return_large_blocks_to_the_system()
    scheme = "https" if config.listen.tls else "http"
    print(
        f"Serving {config.server_name} on {scheme}://{config.listen.host}:{config.listen.port}",
        file=sys.stderr,
    )
    app = asgi_app(config)
    shutdown_timeout_s = config.listen.shutdown_timeout_ms / 1000
    uvicorn_config = uvicorn.Config(
        app,
        host=config.listen.host,
        port=config.listen.port,
        log_level=args.log_level.lower(),
        access_log=False,
        loop="auto",
        # uvicorn's protocol with bounds on the request head and JSON Matrix errors for
        # the requests it refuses itself (homeserver/web/http_protocol.py).
        http=http_protocol_class(),
        h11_max_incomplete_event_size=MAX_TARGET_BYTES + MAX_HEADER_BYTES,
        lifespan="on",
        log_config=None,
        # The WebSocket transport has its own heartbeat (docs/websocket.md) and its
        # own frame limit (an error frame up to twice max_frame_bytes, 1009 past it).
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_max_size=2 * config.websocket.max_frame_bytes,
        # Requests still running this long after SIGTERM are cancelled.
        timeout_graceful_shutdown=math.ceil(shutdown_timeout_s),
        ssl_certfile=config.listen.tls_certificate_path,
        ssl_keyfile=config.listen.tls_private_key_path,
        # X-Forwarded-For is read by our own middleware, from listen.trusted_proxies only
        # (uvicorn's would trust 127.0.0.1 by default).
        proxy_headers=False,
    )
    _Server(uvicorn_config, app.begin_shutdown, shutdown_timeout_s).run()
    return 0


# After the requests' time is up, what is left (closing the database and the background
# jobs) gets this long before the process exits regardless.
EXIT_GRACE_S = 3.0


class _Server(uvicorn.Server):
    """uvicorn's server, which tells the homeserver as soon as a signal asks it to stop:
    uvicorn itself only stops accepting and waits for the requests in flight, and a
    long-poll would hold it up for its whole timeout."""

    def __init__(
        self, config: uvicorn.Config, begin_shutdown: Callable[[], None], timeout_s: float
    ) -> None:
        super().__init__(config)
        self._begin_shutdown = begin_shutdown
        self._timeout_s = timeout_s
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._watchdog is not None:
            return
        # Bounded whatever happens (a pool that never frees, a stuck close): the database
        # holds everything acknowledged, so exiting loses nothing.
        self._watchdog = threading.Timer(self._timeout_s + EXIT_GRACE_S, _exit_now)
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon_threadsafe(self._begin_shutdown)


def _exit_now() -> None:
    print("shut-down took too long; exiting", file=sys.stderr)
    os._exit(1)


def several_workers_problem(config: HomeserverConfig, workers: int) -> str | None:
    """Why this config cannot run as one of several workers (``--workers`` above 1, or a
    worker name given), or None. Workers share the database and wake each other through
    Redis: SQLite has one writer, and the in-memory bus reaches one process."""
    if workers < 1:
        return "--workers must be at least 1"
    if workers == 1 and config.worker.name == "main":
        return None
    several = f"--workers {workers}" if workers > 1 else f"worker.name {config.worker.name!r}"
    if config.database_url.startswith("sqlite"):
        return (
            f"{several}: several workers need PostgreSQL (database.url); SQLite serves one process"
        )
    if config.redis.url is None:
        return f"{several}: several workers need Redis (redis.url) to wake each other"
    return None


# A worker that exits on its own is started again after this pause.
RESTART_PAUSE_S = 1.0


def _supervise(args: argparse.Namespace, config: HomeserverConfig) -> int:
    """``run --workers N``: N worker processes of this config, worker ``<name>-<i>`` on port
    ``listen.port + i - 1``, each its own uvicorn behind the load balancer (which checks
    each one's /health and stops sending to one that fails). A worker that exits is started
    again; SIGTERM or SIGINT stops them all (each drains as a single worker does)."""
    import signal
    import subprocess
    import time

    cmd_migrate(args)  # once, before the workers (each then finds the schema current)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    base = [sys.executable, "-m", "homeserver", "-c", str(_config_path(args)), "run"]
    base += ["--log-level", args.log_level]

    def start(i: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["HS_WORKER__NAME"] = f"{config.worker.name}-{i + 1}"
        env["HS_LISTEN__PORT"] = str(config.listen.port + i)
        return subprocess.Popen(base, env=env)

    workers = [start(i) for i in range(args.workers)]
    print(
        f"Supervising {args.workers} workers on ports {config.listen.port}-"
        f"{config.listen.port + args.workers - 1}",
        file=sys.stderr,
    )
    while not stopping.wait(0.2):
        for i, proc in enumerate(workers):
            if proc.poll() is not None and not stopping.is_set():
                print(
                    f"worker {i + 1} exited ({proc.returncode}); starting it again", file=sys.stderr
                )
                time.sleep(RESTART_PAUSE_S)
                workers[i] = start(i)
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + config.listen.shutdown_timeout_ms / 1000 + 2 * EXIT_GRACE_S
    for proc in workers:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0


def cmd_rotate_signing_key(args: argparse.Namespace) -> int:
    """A new signing key; the old public key stays published in old_verify_keys."""
    import time

    from homeserver.federation.local_keys import rotate_signing_key

    config = _load(_config_path(args), create=False)
    old, new = rotate_signing_key(config.signing_key_file, int(time.time() * 1000))
    print(f"Signing key {old} replaced by {new}; restart the server to use it")
    return 0


def _return_large_blocks_to_the_system() -> None:
    """glibc raises its mmap threshold after a large block is freed, so later large blocks
    (a password hash's 19 MiB, a thumbnail's pixels) come from the heap and stay in the
    process after use. A fixed threshold keeps them mmapped: freed, they are given back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1024 * 1024)


def cmd_register_user(args: argparse.Namespace) -> int:
    from homeserver.lifecycle import running_homeserver

    config = _load(_config_path(args), create=False)
    password = args.password
    if password is None:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Confirm password: "):
            print("Passwords do not match", file=sys.stderr)
            return 1

    async def run() -> str:
        async with running_homeserver(config) as hs:
            return str(await hs.accounts.register_user_admin(args.localpart, password, args.admin))

    try:
        user_id = asyncio.run(run())
    except MatrixError as e:
        print(f"{e.code}: {e.message}", file=sys.stderr)
        return 1
    print(f"Registered {user_id}{' (admin)' if args.admin else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homeserver", description="A Matrix homeserver")
    parser.add_argument(
        "-c", "--config", help=f"config file (default: $HS_CONFIG or ./{DEFAULT_CONFIG})"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve; generates a config and a key on first run")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on consecutive ports from listen.port (PostgreSQL and Redis)",
    )
    run.set_defaults(func=cmd_run)

    rot = sub.add_parser(
        "rotate-signing-key", help="new signing key; the old one stays as an old verify key"
    )
    rot.set_defaults(func=cmd_rotate_signing_key)

    gen = sub.add_parser("generate-config", help="write a config file with the defaults")
    gen.add_argument("--server-name", default="localhost")
    gen.add_argument("--data-dir", default="data")
    gen.add_argument("--force", action="store_true")
    gen.set_defaults(func=cmd_generate_config)

    mig = sub.add_parser("migrate", help="bring the database to the newest schema")
    mig.set_defaults(func=cmd_migrate)

    reg = sub.add_parser("register-user", help="create an account (registration may be closed)")
    reg.add_argument("localpart")
    reg.add_argument("--password", help="prompted for when omitted")
    reg.add_argument("--admin", action="store_true")
    reg.set_defaults(func=cmd_register_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
