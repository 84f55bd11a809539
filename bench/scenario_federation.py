"""Scenario 9, ``federation``: the server under test federating with one peer, over TLS on
loopback.

The peer is a Synapse (the pinned release) for both servers under test: one fixed party on
the other end, so what differs between the two runs is the server under test alone (and
Synapse is what most of the network runs). Each run starts its own pair, both named
``localhost:<port>`` and serving HTTPS with a throwaway CA that both trust: our server
(``ours`` or ``baseline``) with TLS on its one listener, or another Synapse with a TLS
listener for the client, federation and key APIs. The main server the other scenarios use
is left idle meanwhile.

Three measured parts, each with the server under test's CPU seconds and peak RSS:

1. ``federation_join``: a peer user creates ``rooms`` rooms with ``members`` peer members
   and ``events`` messages each (setup); then a user of the server under test joins each
   by ID through the peer (``POST /join/{roomId}?server_name=peer``), one room after the
   other: make_join, send_join with the room's whole state and auth chain, the checks of
   both. Time of each join call.
2. ``federation_ingest``: the peer's users send ``messages`` messages into a room of the
   server under test (its user is a member, long-polling ``/sync``), 16 at a time; the
   peer batches them into transactions (up to 50 PDUs each, one in flight). Events per
   second from the first send to the last arrival at the listener, and each event's lag
   (send start to arrival) p50 and p99.
3. ``federation_delivery``: a user of the server under test sends ``deliveries``
   messages one at a time into that room; a peer user long-polls ``/sync``: latency from
   the start of ``PUT /send`` to the peer's ``/sync`` returning that event, p50 and p99.

All requests go through aiohttp over TLS on both servers (``LeanClient`` speaks plain HTTP
only); ``--scale`` multiplies members, events, messages and deliveries (rooms only at 1
and above).

Hooked into ``bench/scenarios.py`` by ``"federation"`` in ``SCENARIOS``,
``FIGURES.update(FEDERATION_FIGURES)`` and ``Bench.federation``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

from bench.client import Matrix, MatrixCallError, User, timeline_event_ids
from bench.procstat import ProcessWatch
from bench.scenarios import DELIVERY_TIMEOUT_S, Bench, Figure, Result
from bench.servers import (
    REPO,
    SYNAPSE_VENV,
    ensure_synapse_venv,
    free_port,
    generate_synapse_config,
    set_synapse_log_level,
    stop_process,
    synapse_overrides,
    wait_until_serving,
)
from bench.stats import rate, summarize

FEDERATION_FIGURES = {
    "federation_join": {
        "p50_ms": Figure("remote join p50", "ms"),
        "max_ms": Figure("remote join max", "ms"),
    },
    "federation_ingest": {
        "events_per_s": Figure("inbound events/s", "1/s", True),
        "lag_p50_ms": Figure("inbound lag p50", "ms"),
        "lag_p99_ms": Figure("inbound lag p99", "ms"),
    },
    "federation_delivery": {
        "p50_ms": Figure("outbound delivery p50", "ms"),
        "p99_ms": Figure("outbound delivery p99", "ms"),
        "max_ms": Figure("outbound delivery max", "ms"),
    },
}
START_TIMEOUT_S = 180
LOOPBACK_IPS = ("127.0.0.1", "::1")
LONG_POLL_MS = 30_000
INGEST_SENDERS = 16
# Room version of the rooms made here: the default of both servers' newest releases.
ROOM_VERSION = "12"


class TlsServer:
    """A server of the pair, started here and stopped by its PID: HTTPS on one loopback port,
    named ``localhost:<port>``."""

    def __init__(self, name: str, workdir: Path, tls: Path) -> None:
        self.name = name
        self.port = free_port()
        self.server_name = f"localhost:{self.port}"
        self.base_url = f"https://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.tls = tls
        self.log_path = workdir / "server.log"
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=self.environment(),
            )
        self.pid = self._proc.pid
        verify = ssl.create_default_context(cafile=str(self.tls / "ca.pem"))
        wait_until_serving(
            self._proc, self.base_url, self.name, self.log_tail, START_TIMEOUT_S, verify
        )

    def stop(self) -> None:
        stop_process(self._proc)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


class OurTlsServer(TlsServer):
    """Our server (this tree, or a baseline's) with TLS on its listener and federation to
    loopback allowed; the main benchmark configuration otherwise."""

    def __init__(self, name: str, workdir: Path, tls: Path, source: Path = REPO) -> None:
        super().__init__(name, workdir, tls)
        self.source = source
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "data_dir": str(workdir / "data"),
            "listen": {
                "host": "127.0.0.1",
                "port": self.port,
                "tls_certificate_path": str(tls / "cert.pem"),
                "tls_private_key_path": str(tls / "key.pem"),
            },
            "registration": {"enabled": True},
            "rate_limits": {"enabled": False},
            "outbound": {"allow_addresses": ["127.0.0.1/32", "::1/128"]},
            "federation": {"tls_ca_bundle": str(tls / "ca.pem")},
        }
        self.config_path = workdir / "homeserver.yaml"
        self.config_path.write_text(yaml.safe_dump(config))

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "homeserver",
            "-c",
            str(self.config_path),
            "run",
            "--log-level",
            "WARNING",
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HS_")}
        env["PYTHONPATH"] = str(self.source)
        return env


class SynapseTlsServer(TlsServer):
    """Synapse with its generated config, edited as the main benchmark's (``synapse_overrides``)
    plus a TLS listener for the client, federation and key APIs, trust in the test CA and
    loopback allowed for federation."""

    def __init__(self, name: str, workdir: Path, tls: Path) -> None:
        super().__init__(name, workdir, tls)
        ensure_synapse_venv()
        self.config_path = workdir / "homeserver.yaml"
        config, data_dir = generate_synapse_config(
            SYNAPSE_VENV / "bin" / "python", self.server_name, workdir
        )
        config.update(synapse_overrides(self.port, None, False, data_dir / "media_store"))
        config["listeners"] = [
            {
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation", "keys"], "compress": False}],
            }
        ]
        config.update(
            {
                "tls_certificate_path": str(tls / "cert.pem"),
                "tls_private_key_path": str(tls / "key.pem"),
                "federation_custom_ca_list": [str(tls / "ca.pem")],
                "federation_verify_certificates": True,
                "ip_range_whitelist": list(LOOPBACK_IPS),
            }
        )
        self.config_path.write_text(yaml.safe_dump(config))
        set_synapse_log_level(config, "WARNING")

    def command(self) -> list[str]:
        return [
            str(SYNAPSE_VENV / "bin" / "python"),
            "-m",
            "synapse.app.homeserver",
            "--config-path",
            str(self.config_path),
        ]


def _certificate(directory: Path) -> None:
    """A throwaway CA and a certificate for ``localhost`` and the loopback addresses."""
    from tests.tls_helpers import make_certificate

    make_certificate(directory, dns_names=("localhost",), ips=LOOPBACK_IPS)


class SyncWatcher:
    """One user's long-poll ``/sync`` loop over the aiohttp session (TLS): when each event
    ID first arrived (``time.perf_counter()`` once the response was read)."""

    def __init__(self, mx: Matrix, user: User) -> None:
        self.mx = mx
        self.user = user
        self.since: str | None = None
        self.arrivals: dict[str, float] = {}
        self.errors = 0
        self._wanted: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        body, _ = await self.mx.sync(self.user, filter_='{"room":{"timeline":{"limit":1}}}')
        self.since = body["next_batch"]
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                body, _ = await self.mx.sync(self.user, since=self.since, timeout_ms=LONG_POLL_MS)
            except (TimeoutError, OSError, MatrixCallError, aiohttp.ClientError):
                self.errors += 1
                await asyncio.sleep(0.5)
                continue
            now = time.perf_counter()
            self.since = body["next_batch"]
            for event_id in timeline_event_ids(body):
                if event_id not in self.arrivals:
                    self.arrivals[event_id] = now
                    waiting = self._wanted.pop(event_id, None)
                    if waiting is not None:
                        waiting.set()

    async def wait_for(self, event_id: str, timeout_s: float) -> float | None:
        if event_id not in self.arrivals:
            event = self._wanted.setdefault(event_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout_s)
            except TimeoutError:
                return None
        return self.arrivals[event_id]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


async def _send(mx: Matrix, user: User, room_id: str, text: str) -> str:
    return await mx.send_text(user, room_id, text)


async def federation(bench: Bench) -> list[Result]:
    """The three parts against a fresh pair (see the module's doc)."""
    base = Path(tempfile.mkdtemp(prefix=f"bench-federation-{bench.server}-"))
    tls = base / "tls"
    _certificate(tls)
    if bench.server == "synapse":
        under_test: TlsServer = SynapseTlsServer(bench.server, base / "under-test", tls)
    else:
        source = REPO
        baseline = Path(os.environ.get("BENCH_BASELINE_TREE", ""))
        if bench.server == "baseline" and baseline.is_dir():
            source = baseline
        under_test = OurTlsServer(bench.server, base / "under-test", tls, source)
    peer = SynapseTlsServer("peer", base / "peer", tls)
    saved_watch = bench.watch
    try:
        bench.progress(f"federation: starting {under_test.server_name} and peer {peer.server_name}")
        under_test.start()
        peer.start()
        bench.watch = ProcessWatch(under_test.pid)
        context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        connector = aiohttp.TCPConnector(limit=0, ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            here = Matrix(session, under_test.base_url)
            there = Matrix(session, peer.base_url)
            try:
                return await _parts(bench, here, there, under_test, peer)
            except Exception as e:
                raise RuntimeError(
                    f"{e!r}\n--- {under_test.name}:\n{under_test.log_tail()}"
                    f"\n--- peer:\n{peer.log_tail()}"
                ) from e
    finally:
        bench.watch = saved_watch
        under_test.stop()
        peer.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _register(bench: Bench, mx: Matrix, count: int, kind: str) -> list[User]:
    names = [bench.localpart(kind) for _ in range(count)]
    users: list[User] = await bench.bounded(
        f"registering {kind} users (setup)",
        [partial(mx.register, name, bench.password) for name in names],
    )
    return users


async def _parts(
    bench: Bench, here: Matrix, there: Matrix, under_test: TlsServer, peer: TlsServer
) -> list[Result]:
    members, events = bench.n(500, 2), bench.n(5000, 10)
    rooms = bench.n(3, 1) if bench.scale >= 1 else 1
    messages, deliveries = bench.n(1000, 50), bench.n(100, 10)
    peer_users = await _register(bench, there, max(members, INGEST_SENDERS) + 1, "peer")
    owner, others = peer_users[0], peer_users[1:]
    [local, local_sender] = await _register(bench, here, 2, "local")
    joiners = await _register(bench, here, rooms, "joiner")

    # -- 1. remote joins -----------------------------------------------------------------
    join = Result(
        "federation_join",
        f"{rooms} room(s) on the peer, {members} members and {events} messages each: POST "
        "/join through the peer, one room at a time",
    )
    room_ids = []
    for r in range(rooms):
        room_id = await there.create_room(
            owner, preset="public_chat", room_version=ROOM_VERSION, name=f"bench {r}"
        )
        await bench.bounded(
            f"room {r}: {members - 1} peer members (setup)",
            [partial(there.join, u, room_id) for u in others[: members - 1]],
        )
        await bench.bounded(
            f"room {r}: {events} messages (setup)",
            [
                partial(_send, there, others[i % (members - 1)], room_id, f"m{i}")
                for i in range(events)
            ],
            limit=16,
        )
        room_ids.append(room_id)
    samples: list[float] = []
    with bench.measure(join):
        for joiner, room_id in zip(joiners, room_ids, strict=True):
            start = time.perf_counter()
            try:
                await here.call(
                    "POST",
                    f"/_matrix/client/v3/join/{quote(room_id, safe='')}",
                    token=joiner.access_token,
                    params={"server_name": peer.server_name},
                    body={},
                    timeout_s=600,
                )
            except (MatrixCallError, TimeoutError, aiohttp.ClientError) as e:
                join.errors += 1
                join.error = str(e)[:300]
                continue
            samples.append((time.perf_counter() - start) * 1000)
    summary = summarize(samples)
    join.samples_ms["join"] = samples
    join.figures = {"p50_ms": summary["p50"], "max_ms": summary["max"]}

    # -- the room of parts 2 and 3, on the server under test -------------------------------
    room_id = await here.create_room(local, preset="public_chat", room_version=ROOM_VERSION)
    await here.join(local_sender, room_id)
    senders = others[:INGEST_SENDERS]

    async def join_there(user: User) -> None:
        await there.call(
            "POST",
            f"/_matrix/client/v3/join/{quote(room_id, safe='')}",
            token=user.access_token,
            params={"server_name": under_test.server_name},
            body={},
            timeout_s=300,
        )

    await bench.bounded(
        "peer users join the room (setup)", [partial(join_there, u) for u in senders], limit=4
    )

    # -- 2. inbound ingest -----------------------------------------------------------------
    ingest = Result(
        "federation_ingest",
        f"{messages} messages from {len(senders)} peer users, {INGEST_SENDERS} at a time, into "
        "a room of the server under test; events/s from first send to last arrival at a local "
        "long-poll, lag per event",
    )
    watcher = SyncWatcher(here, local)
    await watcher.start()
    sent: dict[str, float] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(messages):
        queue.put_nowait(i)

    async def sender(user: User) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            try:
                event_id = await _send(there, user, room_id, f"in {i}")
            except (MatrixCallError, TimeoutError, aiohttp.ClientError):
                ingest.errors += 1
                continue
            sent[event_id] = start

    try:
        with bench.measure(ingest):
            first = time.perf_counter()
            await asyncio.gather(*(sender(u) for u in senders))
            deadline = time.perf_counter() + max(60.0, bench.budget_seconds)
            for event_id in list(sent):
                left = deadline - time.perf_counter()
                if left <= 0 or await watcher.wait_for(event_id, left) is None:
                    ingest.errors += 1
            arrived = [watcher.arrivals[e] for e in sent if e in watcher.arrivals]
    finally:
        await watcher.stop()
    ingest.listener_errors = watcher.errors
    lags = [(watcher.arrivals[e] - s) * 1000 for e, s in sent.items() if e in watcher.arrivals]
    ingest.samples_ms["lag"] = lags
    lag = summarize(lags)
    ingest.figures = {
        "events_per_s": rate(len(arrived), max(arrived) - first) if arrived else None,
        "lag_p50_ms": lag["p50"],
        "lag_p99_ms": lag["p99"],
    }

    # -- 3. outbound delivery --------------------------------------------------------------
    delivery = Result(
        "federation_delivery",
        f"{deliveries} messages one at a time from a user of the server under test; PUT /send "
        "start to the peer user's long-poll /sync returning the event",
    )
    peer_watcher = SyncWatcher(there, owner)
    await join_there(owner)
    await peer_watcher.start()
    await asyncio.sleep(1.0)
    latencies: list[float] = []
    try:
        with bench.measure(delivery):
            stop_at = time.perf_counter() + bench.budget_seconds
            for i in range(deliveries):
                if time.perf_counter() > stop_at:
                    delivery.note = f"time budget reached: {i} of {deliveries} sent"
                    break
                start = time.perf_counter()
                try:
                    event_id = await _send(here, local_sender, room_id, f"out {i}")
                except (MatrixCallError, TimeoutError, aiohttp.ClientError):
                    delivery.errors += 1
                    continue
                got = await peer_watcher.wait_for(event_id, DELIVERY_TIMEOUT_S)
                if got is None:
                    delivery.errors += 1
                else:
                    latencies.append((got - start) * 1000)
                await asyncio.sleep(0.05)
    finally:
        await peer_watcher.stop()
    delivery.listener_errors = peer_watcher.errors
    delivery.samples_ms["delivery"] = latencies
    d = summarize(latencies)
    delivery.figures = {"p50_ms": d["p50"], "p99_ms": d["p99"], "max_ms": d["max"]}
    return [join, ingest, delivery]
