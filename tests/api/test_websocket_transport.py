"""The WebSocket transport in process: the outbox bound exactly, the endpoint switched off.

The protocol against a real server and client is in tests/e2e/test_websocket.py; here the
connection runs over a fake transport, so a client that never reads is exact, not a matter
of socket buffer sizes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from homeserver.websocket import PATH, CloseCode
from tests.conftest import make_config
from tests.helpers import auth_header, register, serve

WAIT_S = 30  # a safety net against hangs, not a timing assertion


class StuckClient:
    """A client that never reads: the first frame written blocks until ``unblock``."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.reading = asyncio.Event()

    async def receive(self) -> str | bytes | None:
        return await self.incoming.get()

    async def send(self, text: str) -> None:
        await self.reading.wait()
        self.sent.append(orjson.loads(text))

    async def close(self, code: int, reason: str) -> None:
        await self.reading.wait()
        self.closed = (code, reason)


async def _until(condition: Any) -> None:
    for _ in range(WAIT_S * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


async def test_a_client_that_never_reads_holds_at_most_max_queued_frames(
    tmp_path: Path, db_url: str
) -> None:
    limit = 4
    config = make_config(tmp_path, db_url, websocket={"max_queued_frames": limit})
    async with serve(config) as (hs, client):
        _, token = await register(client, "alice")
        r = await client.post("/_matrix/client/v3/createRoom", json={}, headers=auth_header(token))
        room_id = r.json()["room_id"]
        stuck = StuckClient()
        task = asyncio.create_task(
            hs.websocket.serve(stuck, authorization=f"Bearer {token}", token_in_url=False, query={})
        )
        await _until(lambda: hs.websocket.connections)
        (connection,) = hs.websocket.connections
        await _until(lambda: connection.queued_frames == 1)  # "ready" in flight, the sync
        most = 1
        sent = 0
        while connection.close_code is None:
            before = connection.queued_frames
            r = await client.put(
                f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{sent}",
                json={"body": str(sent)},
                headers=auth_header(token),
            )
            assert r.status_code == 200
            sent += 1
            # One frame per event (waiting for it keeps batches from merging).
            await _until(
                lambda b=before: connection.queued_frames > b or connection.close_code is not None
            )
            most = max(most, connection.queued_frames)
            assert sent <= limit, "the outbox grew past its bound"
        assert connection.close_code == CloseCode.TOO_SLOW
        assert most == limit
        assert connection.queued_frames == 1  # what was queued is dropped: only the close
        stuck.reading.set()
        await asyncio.wait_for(task, WAIT_S)
        assert stuck.closed is not None and stuck.closed[0] == 4008
        assert [f["type"] for f in stuck.sent] == ["ready"]  # the frame that was in flight
        assert not hs.websocket.connections


async def test_a_peer_that_goes_away_ends_its_connection(tmp_path: Path, db_url: str) -> None:
    async with serve(make_config(tmp_path, db_url)) as (hs, client):
        _, token = await register(client, "alice")
        peer = StuckClient()
        peer.reading.set()
        task = asyncio.create_task(
            hs.websocket.serve(peer, authorization=f"Bearer {token}", token_in_url=False, query={})
        )
        await _until(lambda: len(peer.sent) == 2)
        assert [f["type"] for f in peer.sent] == ["ready", "sync"]
        await peer.incoming.put(None)
        await asyncio.wait_for(task, WAIT_S)
        assert peer.closed is None  # nothing is written to a peer that has gone
        assert not hs.websocket.connections


async def test_send_has_the_rate_limit_of_the_http_endpoint(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path,
        db_url,
        rate_limits={"enabled": True, "message": {"per_second": 0.001, "burst": 1}},
    )
    async with serve(config) as (hs, client):
        _, token = await register(client, "alice")
        r = await client.post("/_matrix/client/v3/createRoom", json={}, headers=auth_header(token))
        room_id = r.json()["room_id"]
        peer = StuckClient()
        peer.reading.set()
        task = asyncio.create_task(
            hs.websocket.serve(peer, authorization=f"Bearer {token}", token_in_url=False, query={})
        )
        for i in range(2):
            await peer.incoming.put(
                orjson.dumps(
                    {
                        "id": str(i),
                        "method": "send",
                        "params": {
                            "room_id": room_id,
                            "event_type": "m.room.message",
                            "txn_id": f"t{i}",
                            "content": {"body": "hi"},
                        },
                    }
                ).decode()
            )
        await _until(lambda: sum("id" in f for f in peer.sent) == 2)
        first, second = [f for f in peer.sent if "id" in f]
        assert "event_id" in first["result"]
        assert second["error"]["errcode"] == "M_LIMIT_EXCEEDED"
        assert second["error"]["retry_after_ms"] > 0
        await peer.incoming.put(None)
        await asyncio.wait_for(task, WAIT_S)


async def _websocket_upgrade(app: Any) -> list[dict[str, Any]]:
    """Ask ``app`` for an upgrade as an ASGI server would; what it sends back."""
    scope = {
        "type": "websocket",
        "path": f"/_matrix/client{PATH}",
        "raw_path": b"",
        "query_string": b"",
        "headers": [],
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8008),
        "scheme": "ws",
        "root_path": "",
        "asgi": {"version": "3.0"},
    }
    incoming = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_switched_off_the_endpoint_is_unrecognized(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, websocket={"enabled": False})
    async with serve(config) as (hs, client):
        sent = await _websocket_upgrade(hs.app)
        assert sent[0]["type"] == "websocket.http.response.start"
        assert sent[0]["status"] == 404
        body = b"".join(m.get("body", b"") for m in sent[1:])
        assert orjson.loads(body)["errcode"] == "M_UNRECOGNIZED"
        r = await client.get("/_matrix/client/versions")
        assert r.json()["unstable_features"]["org.homeserver.ws"] is False


async def test_versions_advertises_the_transport(client: Any) -> None:
    r = await client.get("/_matrix/client/versions")
    assert r.json()["unstable_features"]["org.homeserver.ws"] is True
