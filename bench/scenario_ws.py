"""Scenario 7, ``websocket``: delivery latency over WebSocket and over long-poll, same workload.

The ``dm`` workload (pairs in direct rooms, each sender waiting for its receiver) runs twice on
the same rooms: receivers long-polling ``/sync``, then receivers on the WebSocket transport
(docs/websocket.md), filter-less both times. Two results, ``ws_longpoll`` and
``ws_websocket``, with the delivery percentiles and each part's server CPU and peak RSS. A
server without the transport (Synapse) gets the long-poll half and an error for the other.

Hooked into ``bench/scenarios.py`` by: ``"websocket"`` in ``SCENARIOS``,
``FIGURES.update(WS_FIGURES)``, and ``Bench.websocket`` returning
``await websocket(self)``.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import aiohttp
import orjson

from bench.client import Listener, Matrix, User, timeline_event_ids
from bench.scenarios import DELIVERY_TIMEOUT_S, Bench, Figure, PairListener, Result

WS_PATH = "/_matrix/client/unstable/org.homeserver.ws/v1/sync"
UNSTABLE_FEATURE = "org.homeserver.ws"
WS_FIGURES = {
    "ws": {
        "p50_ms": Figure("delivery p50", "ms"),
        "p95_ms": Figure("delivery p95", "ms"),
        "p99_ms": Figure("delivery p99", "ms"),
        "max_ms": Figure("delivery max", "ms"),
    }
}


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
                    url,
                    params={"since": self.since},
                    max_msg_size=0,
                    autoping=True,
                    headers={"Authorization": f"Bearer {self.user.access_token}"},
                ) as ws:
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
        room_id = await bench.mx.create_room(
            sender, preset="trusted_private_chat", is_direct=True, invite=[receiver.user_id]
        )
        await bench.mx.join(receiver, room_id)
        return room_id

    rooms = await bench.bounded(
        "WebSocket scenario rooms (setup)",
        [partial(make, s, r) for s, r in zip(senders, receivers, strict=True)],
    )
    results = [await _run(bench, "longpoll", senders, rooms, receivers, per_pair)]
    if await supports_websocket(bench.mx):
        results.append(await _run(bench, "websocket", senders, rooms, receivers, per_pair))
    else:
        results.append(Result("ws_websocket", "", error="no WebSocket transport"))
    return results


async def _listen(bench: Bench, transport: str, receivers: list[User]) -> list[PairListener]:
    if transport == "longpoll":
        return list(await bench.listeners(receivers))
    primers = [Listener(bench.mx, user) for user in receivers]
    await bench.bounded("first sync tokens (setup)", [p.prime for p in primers], limit=16)
    listeners = [WsListener(bench.mx, p.user, p.since or "") for p in primers]
    for listener in listeners:
        listener.start()
    await asyncio.wait_for(
        asyncio.gather(*(lst.ready.wait() for lst in listeners)), DELIVERY_TIMEOUT_S
    )
    # As for long-polls: let every stream reach its first wait before the first send.
    await asyncio.sleep(1.0 + len(listeners) / 100)
    return list(listeners)


async def _run(
    bench: Bench,
    transport: str,
    senders: list[User],
    rooms: list[str],
    receivers: list[User],
    per_pair: int,
) -> Result:
    how = "long-polling /sync" if transport == "longpoll" else "on the WebSocket transport"
    result = Result(
        f"ws_{transport}",
        f"{len(senders)} pairs, {per_pair} events each, "
        f"receivers {how}; PUT /send start to the receiver getting the event",
    )
    listeners = await _listen(bench, transport, receivers)
    await bench.deliver_pairs(result, senders, rooms, listeners, per_pair, transport)
    return result
