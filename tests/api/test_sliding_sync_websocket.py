"""Sliding sync over the WebSocket transport: the ``sliding_sync`` method."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from tests.api.sliding_helpers import room_list, send
from tests.helpers import auth_header, create_room, register

WAIT_S = 30  # a safety net against hangs, not a timing assertion


class FakeClient:
    """A WebSocket peer in process: frames to send go in ``incoming``; what the server
    sends is collected in ``frames``."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.frames: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def receive(self) -> str | bytes | None:
        return await self.incoming.get()

    async def send(self, text: str) -> None:
        self.frames.append(orjson.loads(text))
        self.arrived.set()

    async def close(self, code: int, reason: str) -> None:
        pass

    def request(self, request_id: str, method: str, params: dict[str, Any]) -> None:
        self.incoming.put_nowait(
            orjson.dumps({"id": request_id, "method": method, "params": params}).decode()
        )

    async def answer(self, request_id: str) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            while True:
                for frame in self.frames:
                    if frame.get("id") == request_id:
                        return frame
                self.arrived.clear()
                await self.arrived.wait()


async def test_sliding_sync_over_websocket(client: Any, hs: Homeserver) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    peer = FakeClient()
    task = asyncio.create_task(
        hs.websocket.serve(
            peer, authorization=f"Bearer {token}", token_in_url=False, query={"stream": "none"}
        )
    )
    try:
        request = {"lists": {"all": room_list(timeline_limit=3)}}
        peer.request("1", "sliding_sync", request)
        first = (await peer.answer("1"))["result"]
        assert first["lists"]["all"]["count"] == 1 and room in first["rooms"]
        # A long-poll: the requests behind it are answered meanwhile.
        peer.request("2", "sliding_sync", {**request, "pos": first["pos"], "timeout": 30_000})
        peer.request("3", "ping", {})
        assert (await peer.answer("3")) == {"id": "3", "result": {}}
        assert not any(f.get("id") == "2" for f in peer.frames)
        event_id = await send(client, token, room, "over the socket")
        second = (await peer.answer("2"))["result"]
        assert [e["event_id"] for e in second["rooms"][room]["timeline"]] == [event_id]
        # Errors as over HTTP; no /sync stream was asked for.
        peer.request("4", "sliding_sync", {"lists": {"all": {"timeline_limit": "1"}}})
        assert (await peer.answer("4"))["error"]["errcode"] == "M_BAD_JSON"
        peer.request("5", "sliding_sync", {"pos": "nonsense"})
        assert (await peer.answer("5"))["error"]["errcode"] == "M_INVALID_PARAM"
        assert not any(f.get("type") == "sync" for f in peer.frames)
    finally:
        peer.incoming.put_nowait(None)
        await asyncio.wait_for(task, WAIT_S)


async def test_delayed_events_over_websocket(client: Any, hs: Homeserver, clock: FakeClock) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    peer = FakeClient()
    task = asyncio.create_task(
        hs.websocket.serve(
            peer, authorization=f"Bearer {token}", token_in_url=False, query={"stream": "none"}
        )
    )
    message = {"room_id": room, "event_type": "m.room.message", "txn_id": "t1"}
    try:
        peer.request("1", "send", {**message, "content": {"body": "later"}, "delay": 5000})
        delay_id = (await peer.answer("1"))["result"]["delay_id"]
        peer.request("2", "send", {**message, "txn_id": "t2", "content": {"body": "x"}, "delay": 1})
        dropped = (await peer.answer("2"))["result"]["delay_id"]
        peer.request("3", "delayed_events", {})
        listed = (await peer.answer("3"))["result"]["delayed_events"]
        assert {e["delay_id"] for e in listed} == {delay_id, dropped}
        peer.request("4", "delayed_event", {"delay_id": dropped, "action": "cancel"})
        assert (await peer.answer("4")) == {"id": "4", "result": {}}
        clock.advance(4000)
        peer.request("5", "delayed_event", {"delay_id": delay_id, "action": "restart"})
        assert (await peer.answer("5")) == {"id": "5", "result": {}}
        clock.advance(4000)
        assert await hs.delayed_events.send_due() == 0  # restarted: 1 s to go
        peer.request("6", "delayed_event", {"delay_id": delay_id, "action": "send"})
        assert (await peer.answer("6")) == {"id": "6", "result": {}}
        r = await client.get(
            f"/_matrix/client/v3/rooms/{room}/messages",
            params={"dir": "b", "limit": "50"},
            headers=auth_header(token),
        )
        sent = r.json()["chunk"]
        assert [e["content"].get("body") for e in sent].count("later") == 1
        assert "x" not in [e["content"].get("body") for e in sent]
        # Errors as over HTTP.
        peer.request("7", "delayed_event", {"delay_id": delay_id, "action": "send"})
        assert (await peer.answer("7"))["error"]["errcode"] == "M_NOT_FOUND"
        peer.request("8", "delayed_event", {"delay_id": delay_id, "action": "explode"})
        assert (await peer.answer("8"))["error"]["errcode"] == "M_BAD_JSON"
        peer.request("9", "send", {**message, "content": {}, "delay": -1})
        assert (await peer.answer("9"))["error"]["errcode"] == "M_BAD_JSON"
        peer.request("10", "send", {**message, "content": {}, "delay": 24 * 3600 * 1000 + 1})
        assert (await peer.answer("10"))["error"]["errcode"] == "M_MAX_DELAY_EXCEEDED"
        peer.request("11", "delayed_event", {"action": "cancel"})
        assert (await peer.answer("11"))["error"]["errcode"] == "M_MISSING_PARAM"
    finally:
        peer.incoming.put_nowait(None)
        await asyncio.wait_for(task, WAIT_S)
