"""The workloads, all through the public client API; only the measured parts are timed.

Setup (registering users, creating and joining rooms) runs first, concurrently but
bounded, since password hashing is CPU heavy on both servers. Each measured part records
the server's CPU seconds and peak RSS from /proc.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from bench.client import (
    LeanClient,
    Listener,
    Matrix,
    MatrixCallError,
    User,
    timeline_event_ids,
    wait_for_all,
)
from bench.procstat import ProcessWatch
from bench.progress import log
from bench.stats import percentile, rate, summarize

SETUP_CONCURRENCY = 8  # bounded: password hashing and joins are CPU heavy on both servers
DELIVERY_TIMEOUT_S = 30
SCENARIOS = (
    "dm",
    "fanout",
    "throughput",
    "initial_sync",
    "register",
    "media",
    "websocket",
    "sliding_sync",
    "federation",
    "big_fanout",
    "many_rooms",
    "idle",
    "growth",
    "mixed",
)
# Run when no --scenarios is given: all but federation, whose peer set-up alone takes minutes
# per server; it runs when asked for by name.
# The scale scenarios (bench/scenario_scale.py) too: at --scale 1 their set-up alone is long.
SCALE_SCENARIOS = ("big_fanout", "many_rooms", "idle", "growth", "mixed")
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s != "federation" and s not in SCALE_SCENARIOS)


class PairListener(Protocol):
    """What ``Bench.deliver_pairs`` needs of a receiver: long-poll or WebSocket."""

    errors: int

    async def wait_for(self, event_id: str, timeout_s: float) -> float | None: ...

    async def stop(self) -> None: ...


@dataclass
class Figure:
    label: str
    unit: str
    higher_is_better: bool = False


# Every figure of the table, in order; keyed by the result name or a prefix of it
# (``figures_for``).
FIGURES: dict[str, dict[str, Figure]] = {
    "dm": {
        "p50_ms": Figure("delivery p50", "ms"),
        "p95_ms": Figure("delivery p95", "ms"),
        "p99_ms": Figure("delivery p99", "ms"),
        "max_ms": Figure("delivery max", "ms"),
    },
    "fanout": {
        "p50_ms": Figure("delivery p50", "ms"),
        "p99_ms": Figure("delivery p99", "ms"),
        "deliveries_per_s": Figure("deliveries/s", "1/s", True),
    },
    "throughput": {
        "msgs_per_s": Figure("sends accepted/s", "1/s", True),
        "send_p50_ms": Figure("send p50", "ms"),
        "send_p99_ms": Figure("send p99", "ms"),
    },
    "initial_sync": {
        "full_p50_ms": Figure("full sync p50", "ms"),
        "full_max_ms": Figure("full sync max", "ms"),
        "full_kb": Figure("full sync size", "KB"),
        "incr_p50_ms": Figure("incremental p50", "ms"),
        "incr_kb": Figure("incremental size", "KB"),
    },
    "register": {
        "register_per_s": Figure("registrations/s", "1/s", True),
        "register_p50_ms": Figure("register p50", "ms"),
        "login_per_s": Figure("logins/s", "1/s", True),
        "login_p50_ms": Figure("login p50", "ms"),
    },
}
USAGE_FIGURES = {
    "cpu_s": Figure("server CPU", "s"),
    "peak_rss_mb": Figure("server peak RSS", "MB"),
    # The load generator's own: near the measured part's wall time, it was the
    # bottleneck, and latencies include its queueing.
    "client_cpu_s": Figure("bench client CPU", "s"),
}


@dataclass
class Result:
    name: str
    description: str
    figures: dict[str, float | None] = field(default_factory=dict)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: float | None = None
    client_cpu_s: float | None = None
    peak_rss_mb: float | None = None
    wall_s: float = 0.0
    errors: int = 0
    error: str | None = None
    listener_errors: int = 0
    note: str = ""
    series: dict[str, Any] = field(default_factory=dict)  # figures over time (mixed)

    def as_json(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "figures": self.figures,
            "cpu_s": self.cpu_s,
            "peak_rss_mb": self.peak_rss_mb,
            "client_cpu_s": self.client_cpu_s,
            "wall_s": self.wall_s,
            "errors": self.errors,
            "error": self.error,
            "listener_errors": self.listener_errors,
            "note": self.note,
            **({"series": self.series} if self.series else {}),
            "summaries_ms": {k: summarize(v) for k, v in self.samples_ms.items()},
            "samples_ms": {k: [round(x, 3) for x in v] for k, v in self.samples_ms.items()},
        }


# Members of the fan-out rooms (before --scale); --fanout-sizes sets others.
FANOUT_SIZES = (50, 200)


class Bench:
    """Runs the scenarios against one server; users are pooled across scenarios."""

    def __init__(
        self,
        mx: Matrix,
        watch: ProcessWatch,
        server: str,
        scale: float,
        run_id: str,
        throughput_seconds: float,
        budget_seconds: float,
        profiler: Callable[[str], Any] | None = None,
        fanout_sizes: Sequence[int] = FANOUT_SIZES,
    ) -> None:
        self.mx = mx
        self.watch = watch
        self.server = server
        self.scale = scale
        self.run_id = run_id
        self.password = f"bench-password-{run_id}"
        self.throughput_seconds = throughput_seconds
        # A slow server must not stretch the run: a latency scenario stops sending once its
        # measured part has run this long, and reports what it measured.
        self.budget_seconds = budget_seconds
        self.fanout_sizes = tuple(fanout_sizes)
        # --sliding-rooms: the sliding_sync scenario's room count, else 1 000 times the scale.
        self.sliding_rooms: int | None = None
        self.pool: list[User] = []
        self.scale_options: Any = None  # bench.scenario_scale.ScaleOptions, set by the CLI
        self._scale: Any = None
        self._profiler = profiler
        self._counter = 0

    def n(self, base: int, minimum: int = 1) -> int:
        return max(minimum, round(base * self.scale))

    def progress(self, message: str) -> None:
        log(f"{self.server}: {message}")

    def localpart(self, kind: str) -> str:
        self._counter += 1
        return f"b{self.run_id}_{kind}{self._counter}"

    async def bounded(
        self, label: str, jobs: list[Callable[[], Awaitable[Any]]], limit: int = SETUP_CONCURRENCY
    ) -> list[Any]:
        """Run setup jobs with at most ``limit`` at a time, reporting progress."""
        semaphore = asyncio.Semaphore(limit)
        done = 0
        step = max(1, len(jobs) // 4)

        async def one(job: Callable[[], Awaitable[Any]]) -> Any:
            nonlocal done
            async with semaphore:
                value = await job()
            done += 1
            if done % step == 0 or done == len(jobs):
                self.progress(f"  {label}: {done}/{len(jobs)}")
            return value

        return list(await asyncio.gather(*(one(job) for job in jobs)))

    async def users(self, count: int) -> list[User]:
        missing = count - len(self.pool)
        if missing > 0:
            names = [self.localpart("u") for _ in range(missing)]
            self.pool += await self.bounded(
                "registering users (setup)",
                [partial(self.mx.register, name, self.password) for name in names],
            )
        return self.pool[:count]

    @contextmanager
    def measure(self, result: Result) -> Iterator[None]:
        self.progress(f"measuring {result.name}")
        stop_profile = self._profiler(result.name) if self._profiler else None
        self.watch.begin()
        start = time.perf_counter()
        client_cpu = time.process_time()
        try:
            yield
        finally:
            result.wall_s = time.perf_counter() - start
            result.client_cpu_s = round(time.process_time() - client_cpu, 3)
            usage = self.watch.end()
            if stop_profile is not None:
                stop_profile()
            result.cpu_s, result.peak_rss_mb = usage.cpu_s, usage.peak_rss_mb

    async def lean_clients(self, users: list[User]) -> list[LeanClient]:
        """A ``LeanClient`` per user, its connection open (a first request made): clients
        keep their connections, and opening one (a TCP handshake, the server's accept) is
        not what a latency is about."""
        clients = [LeanClient(self.mx, user) for user in users]
        await asyncio.gather(*(c.call("GET", "/_matrix/client/versions") for c in clients))
        return clients

    async def listeners(self, users: list[User]) -> list[Listener]:
        listeners = [Listener(self.mx, user) for user in users]
        await self.bounded(
            "first sync tokens (setup)", [listener.prime for listener in listeners], limit=16
        )
        for listener in listeners:
            listener.start()
        # Let every long-poll reach the server and settle before the first send.
        await asyncio.sleep(1.0 + len(listeners) / 100)
        return listeners

    # -- 1. DM latency --------------------------------------------------------------------

    async def deliver_pairs(
        self,
        result: Result,
        senders: list[User],
        rooms: list[str],
        listeners: Sequence[PairListener],
        per_pair: int,
        label: str,
    ) -> None:
        """Each sender sends ``per_pair`` events into its room, one at a time, each timed from
        the start of PUT /send to its listener receiving it; fills ``result`` (delivery
        percentiles, errors, a note when the time budget cut the run short) and stops the
        listeners."""
        samples: list[float] = []
        deadline = 0.0
        sent = 0

        async def pair(sender: LeanClient, room_id: str, listener: PairListener) -> None:
            nonlocal sent
            for i in range(per_pair):
                if time.perf_counter() > deadline:
                    break
                sent += 1
                start = time.perf_counter()
                try:
                    event_id = await sender.send_text(room_id, f"{label} {i}")
                except (MatrixCallError, OSError, TimeoutError):
                    result.errors += 1
                    sender.close()
                    continue
                arrived = await listener.wait_for(event_id, DELIVERY_TIMEOUT_S)
                if arrived is None:
                    result.errors += 1
                else:
                    samples.append((arrived - start) * 1000)
                # The same pause for every transport: a long-poll needs it to get back to
                # the server before the next event.
                await asyncio.sleep(0.05)

        # Senders on connections of their own, opened before the measured part: eight sends
        # at the same moment would otherwise wait for each other in this process.
        clients = await self.lean_clients(senders)
        try:
            with self.measure(result):
                deadline = time.perf_counter() + self.budget_seconds
                await asyncio.gather(
                    *(pair(c, r, lst) for c, r, lst in zip(clients, rooms, listeners, strict=True))
                )
        finally:
            await asyncio.gather(*(listener.stop() for listener in listeners))
            for client in clients:
                client.close()
        result.listener_errors = sum(listener.errors for listener in listeners)
        total = len(senders) * per_pair
        if sent < total:
            result.note = f"time budget reached: {sent} of {total} events sent"
        summary = summarize(samples)
        result.samples_ms["delivery"] = samples
        result.figures = {
            "p50_ms": summary["p50"],
            "p95_ms": summary["p95"],
            "p99_ms": summary["p99"],
            "max_ms": summary["max"],
        }

    async def dm(self) -> list[Result]:
        pairs, per_pair = self.n(8), self.n(25, 5)
        result = Result(
            "dm",
            f"{pairs} pairs, {per_pair} events each; PUT /send start to the "
            "receiver's long-poll /sync returning the event",
        )
        users = await self.users(2 * pairs)
        senders, receivers = users[0::2], users[1::2]

        async def make(sender: User, receiver: User) -> str:
            room_id = await self.mx.create_room(
                sender, preset="trusted_private_chat", is_direct=True, invite=[receiver.user_id]
            )
            await self.mx.join(receiver, room_id)
            return room_id

        rooms = await self.bounded(
            "DM rooms (setup)",
            [partial(make, s, r) for s, r in zip(senders, receivers, strict=True)],
        )
        listeners = await self.listeners(receivers)
        await self.deliver_pairs(result, senders, rooms, listeners, per_pair, "dm")
        return [result]

    # -- 2. Group fan-out -----------------------------------------------------------------

    async def fanout(self) -> list[Result]:
        return [await self._fanout(self.n(size, 2)) for size in self.fanout_sizes]

    async def _fanout(self, size: int) -> Result:
        events = self.n(10, 3)
        result = Result(
            f"fanout_{size}",
            f"room of {size} members all long-polling, one sender, "
            f"{events} events one after another; delivery to every member",
        )
        members = await self.users(size)
        sender = members[0]
        room_id = await self.mx.create_room(sender, preset="public_chat")
        await self.bounded(
            f"joining the {size}-member room (setup)",
            [partial(self.mx.join, u, room_id) for u in members[1:]],
        )
        listeners = await self.listeners(members)
        [client] = await self.lean_clients([sender])
        samples: list[float] = []
        deliveries, window = 0, 0.0
        try:
            with self.measure(result):
                began = time.perf_counter()
                for i in range(events):
                    if time.perf_counter() - began > self.budget_seconds:
                        result.note = f"time budget reached: {i} of {events} events sent"
                        break
                    start = time.perf_counter()
                    event_id = await client.send_text(room_id, f"fanout {i}")
                    arrivals = await wait_for_all(listeners, event_id, DELIVERY_TIMEOUT_S)
                    got = [a for a in arrivals if a is not None]
                    result.errors += len(arrivals) - len(got)
                    samples += [(a - start) * 1000 for a in got]
                    deliveries += len(got)
                    if got:
                        window += max(got) - start
                    await asyncio.sleep(0.3)  # every long-poll back at the server
        finally:
            await asyncio.gather(*(listener.stop() for listener in listeners))
            client.close()
        result.listener_errors = sum(listener.errors for listener in listeners)
        result.samples_ms["delivery"] = samples
        result.figures = {
            "p50_ms": percentile(samples, 50),
            "p99_ms": percentile(samples, 99),
            "deliveries_per_s": rate(deliveries, window),
        }
        return result

    # -- 3. Send throughput ---------------------------------------------------------------

    async def throughput(self) -> list[Result]:
        return [await self._throughput(4), await self._throughput(16)]

    async def _throughput(self, senders: int) -> Result:
        seconds = self.throughput_seconds
        result = Result(
            f"throughput_{senders}",
            f"{senders} concurrent senders, each in its own "
            f"room, sending back to back for {seconds:g} s",
        )
        users = await self.users(senders)
        rooms = await self.bounded(
            "sender rooms (setup)",
            [partial(self.mx.create_room, u, preset="private_chat") for u in users],
        )
        samples: list[float] = []
        # Each sender on a connection of its own, opened before the measured part: a client
        # that spends less per request leaves the machine's cores to the server.
        clients = await self.lean_clients(users)

        async def sender(client: LeanClient, room_id: str, deadline: float) -> None:
            i = 0
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    await client.send_text(room_id, f"throughput {i}")
                except (MatrixCallError, OSError, TimeoutError):
                    result.errors += 1
                    client.close()
                    continue
                samples.append((time.perf_counter() - start) * 1000)
                i += 1

        try:
            with self.measure(result):
                start = time.perf_counter()
                await asyncio.gather(
                    *(sender(c, r, start + seconds) for c, r in zip(clients, rooms, strict=True))
                )
                elapsed = time.perf_counter() - start
        finally:
            for client in clients:
                client.close()
        result.samples_ms["send"] = samples
        result.figures = {
            "msgs_per_s": rate(len(samples), elapsed),
            "send_p50_ms": percentile(samples, 50),
            "send_p99_ms": percentile(samples, 99),
        }
        return result

    # -- 4. Initial sync ------------------------------------------------------------------

    async def initial_sync(self) -> list[Result]:
        room_count, per_room, repeats = self.n(100), 20, 5
        result = Result(
            "initial_sync",
            f"a user in {room_count} rooms with {per_room} events "
            f"each: full /sync (x{repeats}), then incremental /sync after one new "
            f"event (x{repeats})",
        )
        user = await self.mx.register(self.localpart("sync"), self.password)
        rooms = await self.bounded(
            f"{room_count} rooms (setup)",
            [
                partial(self.mx.create_room, user, preset="private_chat", name=f"bench {i}")
                for i in range(room_count)
            ],
        )
        await self.bounded(
            f"{room_count * per_room} events (setup)",
            [
                partial(self.mx.send_text, user, r, f"history {i}")
                for i in range(per_room)
                for r in rooms
            ],
        )
        full, incremental, full_sizes, incr_sizes = [], [], [], []
        with self.measure(result):
            token = ""
            for i in range(repeats):
                # A different timeout each time (ignored by an initial sync) so that no
                # server answers a repeat from a response cache.
                start = time.perf_counter()
                body, size = await self.mx.sync(user, timeout_ms=i)
                full.append((time.perf_counter() - start) * 1000)
                full_sizes.append(size)
                token = body["next_batch"]
            for i in range(repeats):
                event_id = await self.mx.send_text(user, rooms[i % len(rooms)], f"new {i}")
                start = time.perf_counter()
                body, size = await self.mx.sync(user, since=token, timeout_ms=0)
                incremental.append((time.perf_counter() - start) * 1000)
                incr_sizes.append(size)
                if event_id not in timeline_event_ids(body):
                    result.errors += 1
                token = body["next_batch"]
        result.samples_ms = {"full": full, "incremental": incremental}
        result.figures = {
            "full_p50_ms": percentile(full, 50),
            "full_max_ms": max(full),
            "full_kb": percentile(full_sizes, 50) / 1024,  # type: ignore[operator]
            "incr_p50_ms": percentile(incremental, 50),
            "incr_kb": percentile(incr_sizes, 50) / 1024,
        }  # type: ignore[operator]
        return [result]

    # -- 5. Registration and login --------------------------------------------------------

    async def register(self) -> list[Result]:
        count, concurrency = self.n(16, 2), 4
        result = Result(
            "register",
            f"{count} registrations then {count} password logins, "
            f"{concurrency} at a time; each server's default password hashing",
        )
        names = [self.localpart("reg") for _ in range(count)]
        reg: list[float] = []
        login: list[float] = []
        semaphore = asyncio.Semaphore(concurrency)

        async def timed(samples: list[float], call: Callable[[], Awaitable[Any]]) -> None:
            async with semaphore:
                start = time.perf_counter()
                await call()
                samples.append((time.perf_counter() - start) * 1000)

        with self.measure(result):
            start = time.perf_counter()
            await asyncio.gather(
                *(timed(reg, partial(self.mx.register, n, self.password)) for n in names)
            )
            reg_s = time.perf_counter() - start
            start = time.perf_counter()
            await asyncio.gather(
                *(timed(login, partial(self.mx.login, n, self.password)) for n in names)
            )
            login_s = time.perf_counter() - start
        result.samples_ms = {"register": reg, "login": login}
        result.figures = {
            "register_per_s": rate(len(reg), reg_s),
            "register_p50_ms": percentile(reg, 50),
            "login_per_s": rate(len(login), login_s),
            "login_p50_ms": percentile(login, 50),
        }
        return [result]

    # -- 6. Media, 7. WebSocket: in modules of their own --------------------------------

    async def media(self) -> list[Result]:
        # Imported here: scenario_media builds on this module's Bench, Figure and Result.
        from bench.scenario_media import media

        return await media(self)

    async def websocket(self) -> list[Result]:
        from bench.scenario_ws import websocket

        return await websocket(self)

    async def sliding_sync(self) -> list[Result]:
        from bench.scenario_sliding import sliding_sync

        return await sliding_sync(self)

    async def federation(self) -> list[Result]:
        from bench.scenario_federation import federation

        return await federation(self)

    def scale_runner(self) -> Any:
        from bench.scenario_scale import Scale, ScaleOptions

        if self._scale is None:
            self._scale = Scale(self, self.scale_options or ScaleOptions())
        return self._scale

    async def big_fanout(self) -> list[Result]:
        return list(await self.scale_runner().big_fanout())

    async def many_rooms(self) -> list[Result]:
        return list(await self.scale_runner().many_rooms())

    async def idle(self) -> list[Result]:
        return list(await self.scale_runner().idle())

    async def growth(self) -> list[Result]:
        return list(await self.scale_runner().growth())

    async def mixed(self) -> list[Result]:
        return list(await self.scale_runner().mixed())


def figures_for(result_name: str) -> dict[str, Figure]:
    """The figures of a result: those of the longest key of ``FIGURES`` that is its name or a
    ``_``-separated prefix of it (``media_upload_10mib`` -> ``media_upload``, ``fanout_50`` ->
    ``fanout``); none for a name without one (a scenario that failed as a whole)."""
    parts = result_name.split("_")
    for end in range(len(parts), 0, -1):
        figures = FIGURES.get("_".join(parts[:end]))
        if figures is not None:
            return figures
    return {}


def _add_module_figures() -> None:
    from bench.scenario_federation import FEDERATION_FIGURES
    from bench.scenario_media import MEDIA_FIGURES
    from bench.scenario_scale import SCALE_FIGURES
    from bench.scenario_sliding import SLIDING_FIGURES
    from bench.scenario_ws import WS_FIGURES

    FIGURES.update(MEDIA_FIGURES)
    FIGURES.update(WS_FIGURES)
    FIGURES.update(SLIDING_FIGURES)
    FIGURES.update(FEDERATION_FIGURES)
    FIGURES.update(SCALE_FIGURES)


_add_module_figures()
