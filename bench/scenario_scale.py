"""The scale scenarios (issue 24): big rooms, many rooms per user, idle connections, cost
growth and a mixed load over time.

- ``big_fanout``: rooms of 1 000 and 5 000 members (``--big-fanout-sizes``, times
  ``--scale``), paced (one event, wait for every delivery, pause) and burst (events back to
  back, then wait); at most ``--listener-cap`` members long-poll (the rest are members
  that the server still fans out to, without a connection): delivery p50/p99 and server
  CPU per delivered event. Set-up time is reported.
- ``many_rooms``: a user in 1 000 and 5 000 rooms (``--rooms-per-user``): initial sync,
  incremental sync after one message, the sync after another user joins one of the rooms,
  and the sync after the user leaves one.
- ``idle``: 2 000 idle long-polls plus 10 000 idle WebSockets (``--idle-longpolls``,
  ``--idle-websockets``; WebSockets on our server only): server memory per connection
  (VmRSS after minus before, over the connections), and the latency of a message to one
  of them while the rest idle.
- ``growth``: the paced fan-out at 50, 200, 1 000 and 5 000 members and the incremental
  sync at 10, 100, 1 000 rooms per user (each times ``--scale``; points already measured
  in this run are not measured twice), plotted to ``growth.png``.
- ``mixed``: a few hundred users (200 times ``--scale``) in rooms of 10, chatting, typing,
  sending read receipts and uploading small files for ``--duration`` seconds: send and
  delivery p50/p99 and server RSS per 10 s window (``mixed.png``).

Users are registered through an application service (``bench/servers.py``) so that set-up
does not hash thousands of passwords; joins run ``SETUP_CONCURRENCY`` at a time.

Hooked into ``bench/scenarios.py`` by names in ``SCENARIOS``, ``FIGURES.update(SCALE_FIGURES)``
and ``Bench`` methods calling this module.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from bench.client import (
    PRIME_FILTER,
    LeanClient,
    Listener,
    MatrixCallError,
    User,
    timeline_event_ids,
    wait_for_all,
)
from bench.procstat import rss_mb
from bench.scenarios import DELIVERY_TIMEOUT_S, Bench, Figure, Result
from bench.servers import APPSERVICE_TOKEN, APPSERVICE_USER_PREFIX
from bench.stats import percentile

SCALE_FIGURES = {
    "bigfanout": {
        "p50_ms": Figure("delivery p50", "ms"),
        "p99_ms": Figure("delivery p99", "ms"),
        "cpu_per_delivery_ms": Figure("server CPU per delivery", "ms"),
        "setup_s": Figure("set-up time", "s"),
    },
    "manyrooms": {
        "full_ms": Figure("initial sync", "ms"),
        "full_kb": Figure("initial sync size", "KB"),
        "incr_p50_ms": Figure("incremental p50", "ms"),
        "join_p50_ms": Figure("sync after other's join p50", "ms"),
        "leave_p50_ms": Figure("sync after own leave p50", "ms"),
        "setup_s": Figure("set-up time", "s"),
    },
    "idle": {
        "kb_per_longpoll": Figure("RSS per idle long-poll", "KB"),
        "kb_per_websocket": Figure("RSS per idle WebSocket", "KB"),
        "p50_ms": Figure("delivery p50 to one", "ms"),
        "p99_ms": Figure("delivery p99 to one", "ms"),
        "setup_s": Figure("set-up time", "s"),
    },
    "mixed": {
        "send_p50_ms": Figure("send p50", "ms"),
        "send_p99_ms": Figure("send p99", "ms"),
        "delivery_p50_ms": Figure("delivery p50", "ms"),
        "delivery_p99_ms": Figure("delivery p99", "ms"),
        "p99_first_ms": Figure("delivery p99, first window", "ms"),
        "p99_last_ms": Figure("delivery p99, last window", "ms"),
        "rss_growth_pct": Figure("RSS growth after warm-up", "%"),
        "actions": Figure("actions", "n", True),
    },
}
GROWTH_SIZES = (50, 200, 1000, 5000)
GROWTH_ROOMS = (10, 100, 1000)
MIXED_WINDOW_S = 10.0
REGISTER_CONCURRENCY = 16
MIN_ROOMS = 10  # many_rooms touches 5 rooms with messages, 3 with joins, 3 with leaves


@dataclass
class ScaleOptions:
    fanout_sizes: tuple[int, ...] = (1000, 5000)
    rooms_per_user: tuple[int, ...] = (1000, 5000)
    listener_cap: int = 1000
    idle_longpolls: int = 2000
    idle_websockets: int = 10000
    duration_s: float = 120.0


def raise_fd_limit() -> int:
    """Raises this process's open-file limit to its hard limit (servers started after it
    inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Scale:
    """The scale scenarios of one ``Bench``: its own pool of application-service users."""

    def __init__(self, bench: Bench, options: ScaleOptions) -> None:
        self.bench = bench
        self.options = options
        self.pool: list[User] = []
        self.measured: set[tuple[str, int]] = set()

    # -- set-up helpers -------------------------------------------------------------------

    async def register_one(self) -> User:
        localpart = APPSERVICE_USER_PREFIX + self.bench.localpart("s")
        _, data, _ = await self.bench.mx.call(
            "POST",
            "/_matrix/client/v3/register",
            token=APPSERVICE_TOKEN,
            body={"type": "m.login.application_service", "username": localpart},
        )
        return User(localpart, data["user_id"], data["access_token"])

    async def users(self, count: int) -> list[User]:
        missing = count - len(self.pool)
        if missing > 0:
            self.pool += await self.bench.bounded(
                "registering users through the application service (setup)",
                [self.register_one for _ in range(missing)],
                limit=REGISTER_CONCURRENCY,
            )
        return self.pool[:count]

    async def room_of(self, members: list[User], preset: str = "public_chat") -> str:
        room_id = await self.bench.mx.create_room(members[0], preset=preset)
        await self.bench.bounded(
            f"joining a {len(members)}-member room (setup)",
            [partial(self.bench.mx.join, u, room_id) for u in members[1:]],
        )
        return room_id

    # -- big fan-out ----------------------------------------------------------------------

    async def big_fanout(self) -> list[Result]:
        results: list[Result] = []
        for size in self.options.fanout_sizes:
            results += await self._fanout(self.bench.n(size, 2), burst=True)
        return results

    async def _fanout(self, size: int, burst: bool) -> list[Result]:
        bench = self.bench
        self.measured.add(("fanout", size))
        setup_start = time.perf_counter()
        members = await self.users(size)
        room_id = await self.room_of(members)
        listening = members[: self.options.listener_cap]
        listeners = await bench.listeners(listening)
        [client] = await bench.lean_clients([members[0]])
        setup_s = time.perf_counter() - setup_start
        note = "" if len(listening) == size else f"{len(listening)} of {size} members long-poll"
        results = []
        try:
            paced = Result(
                f"bigfanout_paced_{size}",
                f"room of {size} members, {len(listening)} long-polling; one event at a "
                "time, each waited for at every listener",
                note=note,
            )
            events = bench.n(10, 3)
            samples: list[float] = []
            with bench.measure(paced):
                began = time.perf_counter()
                for i in range(events):
                    if time.perf_counter() - began > bench.budget_seconds:
                        paced.note = f"time budget reached: {i} of {events} events. {note}"
                        break
                    start = time.perf_counter()
                    event_id = await client.send_text(room_id, f"paced {i}")
                    arrivals = await wait_for_all(listeners, event_id, DELIVERY_TIMEOUT_S)
                    got = [(a - start) * 1000 for a in arrivals if a is not None]
                    paced.errors += len(arrivals) - len(got)
                    samples += got
                    await asyncio.sleep(0.5)  # every long-poll back at the server
            self._fill_fanout(paced, samples, size, len(listening), setup_s)
            results.append(paced)
            if burst:
                results.append(await self._burst(size, room_id, client, listeners, setup_s))
        finally:
            await asyncio.gather(*(listener.stop() for listener in listeners))
            client.close()
        for result in results:
            result.listener_errors = sum(listener.errors for listener in listeners)
        return results

    async def _burst(
        self,
        size: int,
        room_id: str,
        client: LeanClient,
        listeners: list[Listener],
        setup_s: float,
    ) -> Result:
        bench = self.bench
        events = bench.n(10, 3)
        result = Result(
            f"bigfanout_burst_{size}",
            f"room of {size} members, {len(listeners)} long-polling; {events} events sent "
            "back to back, then every delivery waited for",
        )
        samples: list[float] = []
        with bench.measure(result):
            sent: list[tuple[str, float]] = []
            for i in range(events):
                start = time.perf_counter()
                sent.append((await client.send_text(room_id, f"burst {i}"), start))
            for event_id, start in sent:
                arrivals = await wait_for_all(listeners, event_id, DELIVERY_TIMEOUT_S)
                got = [(a - start) * 1000 for a in arrivals if a is not None]
                result.errors += len(arrivals) - len(got)
                samples += got
        self._fill_fanout(result, samples, size, len(listeners), setup_s)
        return result

    @staticmethod
    def _fill_fanout(
        result: Result, samples: list[float], size: int, listening: int, setup_s: float
    ) -> None:
        result.samples_ms["delivery"] = samples
        # Every member is fanned out to, listening or not: CPU per delivery counts those
        # long-polling (what was measured); per member it is that times listening/size.
        per = result.cpu_s * 1000 / len(samples) if result.cpu_s and samples else None
        result.figures = {
            "p50_ms": percentile(samples, 50),
            "p99_ms": percentile(samples, 99),
            "cpu_per_delivery_ms": per,
            "setup_s": setup_s,
        }

    # -- many rooms per user --------------------------------------------------------------

    async def many_rooms(self) -> list[Result]:
        return [
            await self._many_rooms(self.bench.n(n, MIN_ROOMS)) for n in self.options.rooms_per_user
        ]

    async def _many_rooms(self, count: int, full_repeats: int = 2) -> Result:
        bench = self.bench
        self.measured.add(("rooms", count))
        result = Result(
            f"manyrooms_{count}",
            f"a user in {count} rooms: initial sync (x{full_repeats}), incremental sync "
            "after one message (x5), after another user joins one of the rooms (x3), "
            "after the user leaves one (x3)",
        )
        setup_start = time.perf_counter()
        user, other = await self._fresh_pair()
        rooms = await bench.bounded(
            f"{count} rooms (setup)",
            [partial(bench.mx.create_room, user, preset="public_chat") for _ in range(count)],
        )
        setup_s = time.perf_counter() - setup_start
        full, full_sizes, incr, joins, leaves = [], [], [], [], []

        async def incremental(token: str) -> tuple[dict[str, Any], float]:
            start = time.perf_counter()
            body, _ = await bench.mx.sync(user, since=token, timeout_ms=0)
            return body, (time.perf_counter() - start) * 1000

        with bench.measure(result):
            token = ""
            for i in range(full_repeats):
                start = time.perf_counter()
                body, size = await bench.mx.sync(user, timeout_ms=i)
                full.append((time.perf_counter() - start) * 1000)
                full_sizes.append(size)
                token = body["next_batch"]
            for i in range(5):
                event_id = await bench.mx.send_text(user, rooms[i % count], f"new {i}")
                body, ms = await incremental(token)
                incr.append(ms)
                if event_id not in timeline_event_ids(body):
                    result.errors += 1
                token = body["next_batch"]
            for i in range(3):
                await bench.mx.join(other, rooms[(i + 5) % count])
                body, ms = await incremental(token)
                joins.append(ms)
                token = body["next_batch"]
            for i in range(3):
                room_id = rooms[-1 - i]
                await bench.mx.call(
                    "POST",
                    f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/leave",
                    token=user.access_token,
                    body={},
                )
                body, ms = await incremental(token)
                leaves.append(ms)
                if room_id not in body.get("rooms", {}).get("leave", {}):
                    result.errors += 1
                token = body["next_batch"]
        result.samples_ms = {"full": full, "incremental": incr, "join": joins, "leave": leaves}
        result.figures = {
            "full_ms": percentile(full, 50),
            "full_kb": (percentile(full_sizes, 50) or 0) / 1024,
            "incr_p50_ms": percentile(incr, 50),
            "join_p50_ms": percentile(joins, 50),
            "leave_p50_ms": percentile(leaves, 50),
            "setup_s": setup_s,
        }
        return result

    async def _fresh_pair(self) -> tuple[User, User]:
        """Two users of their own (not from the pool, whose members are in other rooms)."""
        return await self.register_one(), await self.register_one()

    # -- idle connections -----------------------------------------------------------------

    async def idle(self) -> list[Result]:
        from bench.scenario_ws import WS_PATH, supports_websocket

        bench = self.bench
        longpolls = bench.n(self.options.idle_longpolls, 2)
        sockets = bench.n(self.options.idle_websockets, 1)
        has_ws = await supports_websocket(bench.mx)
        limit = raise_fd_limit()
        if longpolls + (sockets if has_ws else 0) + 200 > limit:
            return [Result("idle", "", error=f"open-file limit {limit} too low")]
        result = Result(
            "idle",
            f"{longpolls} idle long-polls"
            + (f" + {sockets} idle WebSockets" if has_ws else " (no WebSocket transport)")
            + "; server RSS per connection, and 20 messages to one long-poller "
            "while the rest idle",
        )
        pid = bench.watch.pid
        setup_start = time.perf_counter()
        # Every user registered before the first RSS reading: only connections in between.
        users = await self.users(longpolls + 1 + (sockets if has_ws else 0))
        sender, idlers = users[0], users[1 : longpolls + 1]
        target = idlers[0]
        room_id = await bench.mx.create_room(
            sender, preset="trusted_private_chat", invite=[target.user_id]
        )
        await bench.mx.join(target, room_id)
        before = rss_mb(pid) if pid else None
        listeners = await bench.listeners(idlers)
        after_lp = rss_mb(pid) if pid else None
        ws_sessions: list[Any] = []
        after_ws = None
        if has_ws:
            url = bench.mx.base_url.replace("http", "ws", 1) + WS_PATH

            async def connect(user: User) -> Any:
                ws = await bench.mx.session.ws_connect(
                    url,
                    params={"filter": PRIME_FILTER},
                    autoping=True,
                    headers={"Authorization": f"Bearer {user.access_token}"},
                )
                ws_sessions.append(ws)
                return ws

            await bench.bounded(
                "idle WebSockets (setup)",
                [partial(connect, u) for u in users[longpolls + 1 :]],
                limit=32,
            )
            # Answer the server's pings meanwhile: a WebSocket that does not is closed.
            readers = [asyncio.create_task(_drain(ws)) for ws in ws_sessions]
            await asyncio.sleep(2.0)
            after_ws = rss_mb(pid) if pid else None
        else:
            readers = []
        setup_s = time.perf_counter() - setup_start
        [client] = await bench.lean_clients([sender])
        samples: list[float] = []
        try:
            with bench.measure(result):
                for i in range(20):
                    start = time.perf_counter()
                    event_id = await client.send_text(room_id, f"to one {i}")
                    arrived = await listeners[0].wait_for(event_id, DELIVERY_TIMEOUT_S)
                    if arrived is None:
                        result.errors += 1
                    else:
                        samples.append((arrived - start) * 1000)
                    await asyncio.sleep(0.1)
        finally:
            client.close()
            await asyncio.gather(*(listener.stop() for listener in listeners))
            for task in readers:
                task.cancel()
            await asyncio.gather(*(ws.close() for ws in ws_sessions), return_exceptions=True)
        result.listener_errors = sum(listener.errors for listener in listeners)
        result.samples_ms["delivery"] = samples
        result.figures = {
            "kb_per_longpoll": (after_lp - before) * 1024 / len(idlers)
            if before is not None and after_lp is not None
            else None,
            "kb_per_websocket": (after_ws - after_lp) * 1024 / sockets
            if after_ws is not None and after_lp is not None
            else None,
            "p50_ms": percentile(samples, 50),
            "p99_ms": percentile(samples, 99),
            "setup_s": setup_s,
        }
        return [result]

    # -- cost growth ----------------------------------------------------------------------

    async def growth(self) -> list[Result]:
        results: list[Result] = []
        for size in GROWTH_SIZES:
            size = self.bench.n(size, 2)
            if ("fanout", size) not in self.measured:
                results += await self._fanout(size, burst=False)
        for rooms in GROWTH_ROOMS:
            rooms = self.bench.n(rooms, MIN_ROOMS)
            if ("rooms", rooms) not in self.measured:
                results.append(await self._many_rooms(rooms, full_repeats=1))
        return results

    # -- mixed load -----------------------------------------------------------------------

    async def mixed(self) -> list[Result]:
        bench = self.bench
        count = bench.n(200, 10)
        duration = self.options.duration_s
        result = Result(
            "mixed",
            f"{count} users in rooms of 10 for {duration:g} s: each acts every 2-8 s "
            "(70% message, 15% read receipt, 10% typing, 5% 16 KiB upload); "
            f"percentiles per {MIXED_WINDOW_S:g} s window",
        )
        users = await self.users(count)
        groups = [users[i : i + 10] for i in range(0, count, 10)]
        rooms = await bench.bounded(
            "mixed-load rooms (setup)", [partial(self.room_of, g, "public_chat") for g in groups]
        )
        room_of_user = {u.user_id: r for g, r in zip(groups, rooms, strict=True) for u in g}
        members = {r: g for g, r in zip(groups, rooms, strict=True)}
        listeners = {lst.user.user_id: lst for lst in await bench.listeners(users)}
        clients = await bench.lean_clients(users)
        pid = bench.watch.pid
        windows: list[dict[str, list[float]]] = []
        rss: list[float] = []
        actions = 0
        blob = os.urandom(16 * 1024)
        tracking: set[asyncio.Task[None]] = set()
        stop_at = 0.0

        def window() -> dict[str, list[float]]:
            index = int((time.perf_counter() - (stop_at - duration)) // MIXED_WINDOW_S)
            while len(windows) <= index:
                windows.append({"send": [], "delivery": []})
            return windows[index]

        async def act(client: LeanClient) -> None:
            nonlocal actions
            user = client.user
            room_id = room_of_user[user.user_id]
            room = quote(room_id, safe="")
            rng = random.Random(user.user_id)
            last_event: str | None = None
            await asyncio.sleep(rng.uniform(0, 4))
            while time.perf_counter() < stop_at:
                roll = rng.random()
                try:
                    if roll < 0.70 or last_event is None:
                        start = time.perf_counter()
                        event_id = await client.send_text(room_id, "mixed")
                        window()["send"].append((time.perf_counter() - start) * 1000)
                        last_event = event_id
                        peer = rng.choice([m for m in members[room_id] if m is not user])
                        tracking.add(
                            asyncio.create_task(
                                self._track(listeners[peer.user_id], event_id, start, window)
                            )
                        )
                    elif roll < 0.85:
                        await client.call(
                            "POST",
                            f"/_matrix/client/v3/rooms/{room}/receipt/m.read/"
                            f"{quote(last_event, safe='')}",
                            b"{}",
                        )
                    elif roll < 0.95:
                        who = quote(user.user_id, safe="")
                        await client.call(
                            "PUT",
                            f"/_matrix/client/v3/rooms/{room}/typing/{who}",
                            orjson.dumps({"typing": True, "timeout": 5000}),
                        )
                    else:
                        await bench.mx.upload(
                            user, blob, len(blob), "application/octet-stream", "mixed.bin"
                        )
                    actions += 1
                except (MatrixCallError, OSError, TimeoutError):
                    result.errors += 1
                    client.close()
                await asyncio.sleep(rng.uniform(2, 8))

        async def sample_rss() -> None:
            while time.perf_counter() < stop_at:
                if pid:
                    rss.append(rss_mb(pid))
                await asyncio.sleep(MIXED_WINDOW_S)

        try:
            with bench.measure(result):
                stop_at = time.perf_counter() + duration
                await asyncio.gather(sample_rss(), *(act(c) for c in clients))
                await asyncio.gather(*tracking)  # the last deliveries
        finally:
            for client in clients:
                client.close()
            await asyncio.gather(*(lst.stop() for lst in listeners.values()))
        result.listener_errors = sum(lst.errors for lst in listeners.values())
        sends = [x for w in windows for x in w["send"]]
        deliveries = [x for w in windows for x in w["delivery"]]
        result.samples_ms = {"send": sends, "delivery": deliveries}
        per_window = [percentile(w["delivery"], 99) for w in windows if w["delivery"]]
        # Warm-up: the first window; growth from the second sample to the last.
        growth = (rss[-1] - rss[1]) / rss[1] * 100 if len(rss) >= 3 else None
        result.figures = {
            "send_p50_ms": percentile(sends, 50),
            "send_p99_ms": percentile(sends, 99),
            "delivery_p50_ms": percentile(deliveries, 50),
            "delivery_p99_ms": percentile(deliveries, 99),
            "p99_first_ms": per_window[0] if per_window else None,
            "p99_last_ms": per_window[-1] if per_window else None,
            "rss_growth_pct": growth,
            "actions": float(actions),
        }
        result.series = {
            "window_s": MIXED_WINDOW_S,
            "delivery_p50_ms": [percentile(w["delivery"], 50) for w in windows],
            "delivery_p99_ms": [percentile(w["delivery"], 99) for w in windows],
            "send_p99_ms": [percentile(w["send"], 99) for w in windows],
            "rss_mb": rss,
        }
        return [result]

    @staticmethod
    async def _track(listener: Listener, event_id: str, start: float, window: Any) -> None:
        arrived = await listener.wait_for(event_id, DELIVERY_TIMEOUT_S)
        if arrived is not None:
            window()["delivery"].append((arrived - start) * 1000)


async def _drain(ws: Any) -> None:
    """Reads an idle WebSocket's frames, answering the server's application pings."""
    try:
        async for message in ws:
            frame = orjson.loads(message.data) if isinstance(message.data, str) else {}
            if isinstance(frame, dict) and frame.get("type") == "ping":
                await ws.send_str('{"type":"pong"}')
    except (asyncio.CancelledError, Exception):
        return


def plot(run: dict[str, Any], directory: Path) -> None:
    """``growth.png`` (delivery p99 and CPU per delivery against room size, incremental sync
    against rooms per user) and ``mixed.png`` (per-window percentiles and RSS), when the run
    has those results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = list(run["servers"])

    def points(prefix: str, figure: str) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for s in servers:
            for name, result in run["servers"][s]["results"].items():
                value = result.get("figures", {}).get(figure)
                if name.startswith(prefix) and value is not None:
                    out.setdefault(s, []).append((int(name.rsplit("_", 1)[1]), value))
        return {s: sorted(v) for s, v in out.items()}

    panels = [
        ("bigfanout_paced_", "p99_ms", "fan-out delivery p99 (ms)", "room members"),
        ("bigfanout_paced_", "cpu_per_delivery_ms", "server CPU per delivery (ms)", "room members"),
        ("manyrooms_", "incr_p50_ms", "incremental sync p50 (ms)", "rooms per user"),
        ("manyrooms_", "full_ms", "initial sync (ms)", "rooms per user"),
    ]
    data = [(p, points(p[0], p[1])) for p in panels]
    if any(d for _, d in data):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8))
        for ax, ((_, _, title, xlabel), series) in zip(axes, data, strict=True):
            for s, pts in series.items():
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=s)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.grid(True, which="both", alpha=0.3)
            if series:
                ax.legend(fontsize=8)
        fig.suptitle(f"cost growth ({run['meta']['db']}, scale {run['meta']['scale']})")
        fig.tight_layout()
        fig.savefig(directory / "growth.png", dpi=100)
        plt.close(fig)
    mixed = {
        s: run["servers"][s]["results"]["mixed"]["series"]
        for s in servers
        if run["servers"][s]["results"].get("mixed", {}).get("series")
    }
    if mixed:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for s, series in mixed.items():
            step = series["window_s"]
            p99 = series["delivery_p99_ms"]
            axes[0].plot(
                [i * step for i in range(len(p99))], p99, marker=".", label=f"{s} delivery p99"
            )
            rss = series["rss_mb"]
            axes[1].plot([i * step for i in range(len(rss))], rss, marker=".", label=s)
        axes[0].set_title("mixed load: delivery p99 per window (ms)", fontsize=10)
        axes[1].set_title("server RSS (MB)", fontsize=10)
        for ax in axes:
            ax.set_xlabel("s")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / "mixed.png", dpi=100)
        plt.close(fig)
