"""Scenario 7, ``websocket``: delivery latency over WebSocket and over long-poll, same workload.

The ``dm`` workload (pairs in direct rooms, each sender waiting for its receiver) runs twice on
the same rooms: receivers long-polling ``/sync``, then receivers on the WebSocket transport
(docs/websocket.md), filter-less both times. Two results, ``ws_longpoll`` and
``ws_websocket``, with the delivery percentiles and each part's server CPU and peak RSS. A
server without the transport (Synapse) gets the long-poll half and an error for the other.

Hooked into ``bench/scenarios.py`` by: ``"websocket"`` in ``SCENARIOS`` (and out of
``NOT_YET``), ``FIGURES.update(WS_FIGURES)``, and ``Bench.websocket`` returning
``await websocket(self)``.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any, Protocol

import aiohttp
import orjson

from bench.client import Listener, Matrix, MatrixCallError, User, timeline_event_ids
from bench.scenarios import DELIVERY_TIMEOUT_S, Bench, Figure, Result
from bench.stats import summarize

WS_PATH = "/_matrix/client/unstable/org.homeserver.ws/v1/sync"
UNSTABLE_FEATURE = "org.homeserver.ws"
WS_FIGURES = {"ws": {"p50_ms": Figure("delivery p50", "ms"),
                     "p95_ms": Figure("delivery p95", "ms"),
                     "p99_ms": Figure("delivery p99", "ms"),
                     "max_ms": Figure("delivery max", "ms")}}


class Receiver(Protocol):
    errors: int

    async def wait_for(self, event_id: str, timeout_s: float) -> float | None: ...

    async def stop(self) -> None: ...


class WsListener:
    """One user's WebSocket: records when each event ID first arrives, like ``Listener``.

    Resumes from its last ``next_batch`` if the connection drops (counted as an error).
    """

    def __init__(self, mx: Matrix, user: User, since: str) -> None:
        self.mx = mx
        self.user = user
        self.since = since
        self.arrivals: dict[str, float] = {}
        self.errors = 0
        self.ready = asyncio.Event()
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        url = self.mx.base_url.replace("http", "ws", 1) + WS_PATH
        while True:
            try:
                async with self.mx.session.ws_connect(
                        url, params={"since": self.since}, max_msg_size=0, autoping=True,
                        headers={"Authorization": f"Bearer {self.user.access_token}"}) as ws:
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        await self._on_frame(ws, orjson.loads(message.data))
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.errors += 1
            await asyncio.sleep(0.5)

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, frame: Any) -> None:
        kind = frame.get("type")
        if kind == "ping":
            await ws.send_str('{"type":"pong"}')
        elif kind == "ready":
            self.ready.set()
        elif kind == "sync":
            now = time.perf_counter()
            self.since = frame["next_batch"]
            for event_id in timeline_event_ids(frame):
                if event_id not in self.arrivals:
                    self.arrivals[event_id] = now
                    waiter = self._waiters.pop(event_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(now)

    async def wait_for(self, event_id: str, timeout_s: float) -> float | None:
        if event_id in self.arrivals:
            return self.arrivals[event_id]
        waiter = self._waiters.setdefault(event_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


async def supports_websocket(mx: Matrix) -> bool:
    _, versions, _ = await mx.call("GET", "/_matrix/client/versions")
    return bool(versions.get("unstable_features", {}).get(UNSTABLE_FEATURE))


async def websocket(bench: Bench) -> list[Result]:
    pairs, per_pair = bench.n(8), bench.n(25, 5)
    users = await bench.users(2 * pairs)
    senders, receivers = users[0::2], users[1::2]

    async def make(sender: User, receiver: User) -> str:
        room_id = await bench.mx.create_room(sender, preset="trusted_private_chat",
                                             is_direct=True, invite=[receiver.user_id])
        await bench.mx.join(receiver, room_id)
        return room_id

    rooms = await bench.bounded("WebSocket scenario rooms (setup)", [
        partial(make, s, r) for s, r in zip(senders, receivers, strict=True)])
    results = [await _run(bench, "longpoll", senders, rooms, receivers, per_pair)]
    if await supports_websocket(bench.mx):
        results.append(await _run(bench, "websocket", senders, rooms, receivers, per_pair))
    else:
        results.append(Result("ws_websocket", "", error="no WebSocket transport"))
    return results


async def _listen(bench: Bench, transport: str, receivers: list[User]) -> list[Receiver]:
    if transport == "longpoll":
        return list(await bench.listeners(receivers))
    primers = [Listener(bench.mx, user) for user in receivers]
    await bench.bounded("first sync tokens (setup)", [p.prime for p in primers], limit=16)
    listeners = [WsListener(bench.mx, p.user, p.since or "") for p in primers]
    for listener in listeners:
        listener.start()
    await asyncio.wait_for(asyncio.gather(*(lst.ready.wait() for lst in listeners)),
                           DELIVERY_TIMEOUT_S)
    # As for long-polls: let every stream reach its first wait before the first send.
    await asyncio.sleep(1.0 + len(listeners) / 100)
    return list(listeners)


async def _run(bench: Bench, transport: str, senders: list[User], rooms: list[str],
               receivers: list[User], per_pair: int) -> Result:
    how = "long-polling /sync" if transport == "longpoll" else "on the WebSocket transport"
    result = Result(f"ws_{transport}", f"{len(senders)} pairs, {per_pair} events each, "
                    f"receivers {how}; PUT /send start to the receiver getting the event")
    listeners = await _listen(bench, transport, receivers)
    samples: list[float] = []
    deadline = 0.0
    sent = 0

    async def pair(sender: User, room_id: str, listener: Receiver) -> None:
        nonlocal sent
        for i in range(per_pair):
            if time.perf_counter() > deadline:
                break
            sent += 1
            start = time.perf_counter()
            try:
                event_id = await bench.mx.send_text(sender, room_id, f"{transport} {i}")
            except MatrixCallError:
                result.errors += 1
                continue
            arrived = await listener.wait_for(event_id, DELIVERY_TIMEOUT_S)
            if arrived is None:
                result.errors += 1
            else:
                samples.append((arrived - start) * 1000)
            # The same pause in both halves (a long-poll needs it to get back to the server).
            await asyncio.sleep(0.05)

    try:
        with bench.measure(result):
            deadline = time.perf_counter() + bench.budget_seconds
            await asyncio.gather(*(pair(s, r, lst) for s, r, lst
                                   in zip(senders, rooms, listeners, strict=True)))
    finally:
        await asyncio.gather(*(listener.stop() for listener in listeners))
    result.listener_errors = sum(listener.errors for listener in listeners)
    if sent < len(senders) * per_pair:
        result.note = f"time budget reached: {sent} of {len(senders) * per_pair} events sent"
    summary = summarize(samples)
    result.samples_ms["delivery"] = samples
    result.figures = {"p50_ms": summary["p50"], "p95_ms": summary["p95"],
                      "p99_ms": summary["p99"], "max_ms": summary["max"]}
    return result
