"""The WebSocket sync transport against a real server under uvicorn, with the websockets client.

Every wait has a generous safety timeout; nothing asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import ServerProcess
from tests.helpers import auth_header, register

WS_PATH = "/_matrix/client/unstable/org.homeserver.ws/v1/sync"
WAIT_S = 30  # a safety net against hangs, not a timing assertion
# Timelines large enough that no batch in these tests is "limited": every event is in a frame.
BIG_TIMELINE = quote(json.dumps({"room": {"timeline": {"limit": 1000}}}))


# --- a small test client ------------------------------------------------------------------


class Ws:
    """One connection: answers pings (unless told not to) and keeps frames in order."""

    def __init__(self, conn: ClientConnection, *, answer_pings: bool = True) -> None:
        self.conn = conn
        self.answer_pings = answer_pings
        self.pings = 0
        self._backlog: deque[dict[str, Any]] = deque()

    async def next(self) -> dict[str, Any]:
        if self._backlog:
            return self._backlog.popleft()
        while True:
            frame = await self._receive()
            if frame is not None:
                return frame

    async def _receive(self) -> dict[str, Any] | None:
        """The next frame, or None for a ping (counted, and answered if we answer)."""
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.conn.recv(), WAIT_S))
        if frame.get("type") != "ping":
            return frame
        self.pings += 1
        if self.answer_pings:
            await self.conn.send(json.dumps({"type": "pong"}))
        return None

    async def until_pings(self, count: int) -> None:
        """Read (keeping other frames for later) until ``count`` pings have come."""
        while self.pings < count:
            frame = await self._receive()
            if frame is not None:
                self._backlog.append(frame)

    async def next_sync(self) -> dict[str, Any]:
        while True:
            frame = await self.next()
            if frame.get("type") == "sync":
                return frame
            assert frame.get("type") != "error", frame

    async def request(self, request_id: str, method: str, params: Any) -> dict[str, Any]:
        """Send a request and wait for its answer; frames in between are kept for later."""
        await self.conn.send(json.dumps({"id": request_id, "method": method, "params": params}))
        skipped: list[dict[str, Any]] = []
        while True:
            frame = await self.next()
            if frame.get("id") == request_id:
                self._backlog.extendleft(reversed(skipped))
                return frame
            skipped.append(frame)

    async def closed(self) -> tuple[int, str, list[dict[str, Any]]]:
        """Read to the end: the close code and reason, and the frames before them."""
        frames = list(self._backlog)
        self._backlog.clear()
        try:
            while True:
                frame = json.loads(await asyncio.wait_for(self.conn.recv(), WAIT_S))
                if frame.get("type") == "ping" and self.answer_pings:
                    await self.conn.send(json.dumps({"type": "pong"}))
                    continue
                frames.append(frame)
        except ConnectionClosed as e:
            assert e.rcvd is not None, "closed without a close frame"
            return e.rcvd.code, e.rcvd.reason, frames


def ws_url(server: ServerProcess, query: str = "") -> str:
    return server.base_url.replace("http://", "ws://") + WS_PATH + query


@asynccontextmanager
async def ws_connect(
    server: ServerProcess, token: str | None = None, query: str = "", **kwargs: Any
) -> AsyncIterator[Ws]:
    headers = auth_header(token) if token else None
    async with connect(
        ws_url(server, query),
        additional_headers=headers,
        max_size=None,
        proxy=None,
        ping_interval=None,
        **kwargs,
    ) as conn:
        yield Ws(conn)


def timeline(frame: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    room = frame.get("rooms", {}).get("join", {}).get(room_id)
    return list(room["timeline"]["events"]) if room else []


def bodies(frame: dict[str, Any], room_id: str) -> list[str]:
    return [e["content"]["body"] for e in timeline(frame, room_id) if e["type"] == "m.room.message"]


def without_age(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_age(v) for k, v in value.items() if k != "age"}
    if isinstance(value, list):
        return [without_age(v) for v in value]
    return value


class Chat:
    """Users and rooms made over HTTP."""

    def __init__(self, server: ServerProcess, http: httpx.AsyncClient) -> None:
        self.server = server
        self.http = http

    async def user(self) -> tuple[str, str]:
        return await register(self.http, f"u{secrets.token_hex(4)}")

    async def room(self, owner: str, *members: str) -> str:
        r = await self.http.post(
            "/_matrix/client/v3/createRoom",
            headers=auth_header(owner),
            json={"preset": "public_chat"},
        )
        assert r.status_code == 200, r.text
        room_id = str(r.json()["room_id"])
        for token in members:
            r = await self.http.post(
                f"/_matrix/client/v3/join/{room_id}", headers=auth_header(token), json={}
            )
            assert r.status_code == 200, r.text
        return room_id

    async def history(self, token: str, room_id: str) -> list[dict[str, Any]]:
        """The whole room, oldest first, through /messages."""
        events: list[dict[str, Any]] = []
        params = {"dir": "f", "limit": "500"}
        while True:
            r = await self.http.get(
                f"/_matrix/client/v3/rooms/{room_id}/messages",
                headers=auth_header(token),
                params=params,
            )
            assert r.status_code == 200, r.text
            events += r.json()["chunk"]
            if "end" not in r.json():
                return events
            params["from"] = r.json()["end"]

    async def say(self, token: str, room_id: str, body: str, txn_id: str | None = None) -> str:
        r = await self.http.put(
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/"
            f"{txn_id or secrets.token_hex(8)}",
            headers=auth_header(token),
            json={"msgtype": "m.text", "body": body},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["event_id"])


@asynccontextmanager
async def chat(server: ServerProcess) -> AsyncIterator[Chat]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_S) as http:
        yield Chat(server, http)


# --- servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("ws"), None)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_server")
        return
    database_url = request.getfixturevalue("pg_database")
    from tests.conftest import in_thread, truncate

    in_thread(lambda: truncate(database_url))
    proc = ServerProcess(tmp_path, database_url)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def tuned_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own; its config sections come from indirect parametrization."""
    proc = ServerProcess(tmp_path, None, **request.param)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# --- push and resume ----------------------------------------------------------------------


async def test_push_on_new_message(sqlite_server: ServerProcess) -> None:
    async with chat(sqlite_server) as c:
        alice, alice_token = await c.user()
        room_id = await c.room(alice_token)
        async with ws_connect(sqlite_server, alice_token) as ws:
            ready = await ws.next()
            assert ready["type"] == "ready" and ready["user_id"] == alice
            initial = await ws.next_sync()
            assert room_id in initial["rooms"]["join"]
            event_id = await c.say(alice_token, room_id, "hello")
            frame = await ws.next_sync()
            assert [e["event_id"] for e in timeline(frame, room_id)] == [event_id]
            # The frame is a /sync response: the same body from the same token (but "age").
            r = await c.http.get(
                "/_matrix/client/v3/sync",
                headers=auth_header(alice_token),
                params={"since": initial["next_batch"]},
            )
            del frame["type"]
            assert without_age(r.json()) == without_age(frame)


async def test_sync_request_changes_the_filter(sqlite_server: ServerProcess) -> None:
    async with chat(sqlite_server) as c:
        _, token = await c.user()
        room_id = await c.room(token)
        async with ws_connect(sqlite_server, token) as ws:
            await ws.next()
            since = (await ws.next_sync())["next_batch"]
            only_custom = {"room": {"timeline": {"types": ["org.example.custom"]}}}
            answer = await ws.request("f1", "sync", {"since": since, "filter": only_custom})
            assert answer == {"id": "f1", "result": {}}
            await c.say(token, room_id, "not shown")
            r = await c.http.put(
                f"/_matrix/client/v3/rooms/{room_id}/send/org.example.custom/x",
                headers=auth_header(token),
                json={"n": 1},
            )
            frame = await ws.next_sync()
            while not timeline(frame, room_id):
                frame = await ws.next_sync()
            assert [e["event_id"] for e in timeline(frame, room_id)] == [r.json()["event_id"]]


async def test_resume_after_disconnects_no_gap_no_duplicate(sqlite_server: ServerProcess) -> None:
    """1 000 events sent over HTTP while the client reconnects again and again from its last
    next_batch: it sees each exactly once, in the room's order."""
    total, senders, per_connection = 1000, 4, 150
    async with chat(sqlite_server) as c:
        _, token = await c.user()
        room_id = await c.room(token)

        async def send_all() -> None:
            async def send_some(k: int) -> None:
                for i in range(k, total, senders):
                    await c.say(token, room_id, f"m{i}", txn_id=f"t{i}")

            await asyncio.gather(*(send_some(k) for k in range(senders)))

        seen: list[str] = []
        since: str | None = None
        sender: asyncio.Task[None] | None = None
        connections = 0
        try:
            while len(seen) < total:
                query = f"?filter={BIG_TIMELINE}" + (f"&since={since}" if since else "")
                async with ws_connect(sqlite_server, token, query) as ws:
                    connections += 1
                    assert (await ws.next())["type"] == "ready"
                    got = 0
                    while len(seen) < total and got < per_connection:
                        frame = await ws.next_sync()
                        if since is not None:
                            room = frame.get("rooms", {}).get("join", {}).get(room_id)
                            assert not room or not room["timeline"]["limited"]
                        new = bodies(frame, room_id)
                        seen.extend(new)
                        got += len(new)
                        since = frame["next_batch"]
                        if sender is None:
                            sender = asyncio.create_task(send_all())
                    if connections % 2:
                        # Half the time the connection just drops, frames still in flight.
                        ws.conn.transport.abort()
        finally:
            if sender is not None:
                await sender
        in_room = [
            e["content"]["body"]
            for e in await c.history(token, room_id)
            if e["type"] == "m.room.message"
        ]
        assert sorted(in_room) == sorted(f"m{i}" for i in range(total))
        assert seen == in_room
        assert connections >= 5


async def test_long_poll_and_websocket_see_the_same_order(any_server: ServerProcess) -> None:
    rounds = 25
    async with chat(any_server) as c:
        _, alice_token = await c.user()
        _, bob_token = await c.user()
        room_id = await c.room(alice_token, bob_token)
        r = await c.http.get("/_matrix/client/v3/sync", headers=auth_header(bob_token))
        bob_since = r.json()["next_batch"]
        async with ws_connect(any_server, alice_token, f"?filter={BIG_TIMELINE}") as ws:
            await ws.next()
            await ws.next_sync()

            async def bob_sends() -> None:
                for i in range(rounds):
                    await c.say(bob_token, room_id, f"bob {i}")

            async def bob_long_polls() -> list[str]:
                nonlocal bob_since
                ids: list[str] = []
                while len(ids) < 2 * rounds:
                    r = await c.http.get(
                        "/_matrix/client/v3/sync",
                        headers=auth_header(bob_token),
                        params={
                            "since": bob_since,
                            "timeout": 10_000,
                            "filter": json.dumps({"room": {"timeline": {"limit": 1000}}}),
                        },
                    )
                    bob_since = r.json()["next_batch"]
                    ids += [
                        e["event_id"]
                        for e in timeline(r.json(), room_id)
                        if e["type"] == "m.room.message"
                    ]
                return ids

            poller = asyncio.create_task(bob_long_polls())
            sender = asyncio.create_task(bob_sends())
            # Alice sends over the socket, pipelined, while both streams run.
            for i in range(rounds):
                await ws.conn.send(
                    json.dumps(
                        {
                            "id": f"a{i}",
                            "method": "send",
                            "params": {
                                "room_id": room_id,
                                "event_type": "m.room.message",
                                "txn_id": f"a{i}",
                                "content": {"msgtype": "m.text", "body": f"alice {i}"},
                            },
                        }
                    )
                )
            alice_ids: list[str] = []
            answered = 0
            while len(alice_ids) < 2 * rounds or answered < rounds:
                frame = await ws.next()
                if "id" in frame:
                    assert "result" in frame, frame
                    answered += 1
                elif frame["type"] == "sync":
                    alice_ids += [
                        e["event_id"]
                        for e in timeline(frame, room_id)
                        if e["type"] == "m.room.message"
                    ]
            await sender
            assert await poller == alice_ids
            assert len(set(alice_ids)) == 2 * rounds


# --- requests -----------------------------------------------------------------------------


async def test_send_over_the_socket_is_idempotent(sqlite_server: ServerProcess) -> None:
    async with chat(sqlite_server) as c:
        _, token = await c.user()
        _, stranger_token = await c.user()
        room_id = await c.room(token)
        params = {
            "room_id": room_id,
            "event_type": "m.room.message",
            "txn_id": "txn-1",
            "content": {"msgtype": "m.text", "body": "once"},
        }
        async with ws_connect(sqlite_server, token, f"?filter={BIG_TIMELINE}") as ws:
            await ws.next()
            since = (await ws.next_sync())["next_batch"]
            first = await ws.request("1", "send", params)
            again = await ws.request("2", "send", params)
            event_id = first["result"]["event_id"]
            assert again == {"id": "2", "result": {"event_id": event_id}}
        # A new connection (the client reconnected and retries) gets the same event.
        async with ws_connect(sqlite_server, token) as ws:
            await ws.next()
            retry = await ws.request("3", "send", params)
            assert retry["result"]["event_id"] == event_id
        # The same transaction over HTTP, from the same device, is the same event too.
        r = await c.http.put(
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/txn-1",
            headers=auth_header(token),
            json=params["content"],
        )
        assert r.json()["event_id"] == event_id
        r = await c.http.get(
            "/_matrix/client/v3/sync", headers=auth_header(token), params={"since": since}
        )
        assert [e["event_id"] for e in timeline(r.json(), room_id)] == [event_id]

        async with ws_connect(sqlite_server, stranger_token) as ws:
            await ws.next()
            refused = await ws.request("4", "send", params)
            assert refused["error"]["errcode"] == "M_FORBIDDEN"
            missing = await ws.request("5", "send", {"room_id": room_id})
            assert missing["error"]["errcode"] == "M_MISSING_PARAM"
            bad = await ws.request("6", "send", {**params, "room_id": "not a room"})
            assert bad["error"]["errcode"] == "M_INVALID_PARAM"
            not_strict = await ws.request("7", "send", {**params, "content": "text"})
            assert not_strict["error"]["errcode"] == "M_BAD_JSON"


async def test_typing_receipt_and_presence_requests(sqlite_server: ServerProcess) -> None:
    async with chat(sqlite_server) as c:
        alice, alice_token = await c.user()
        _, bob_token = await c.user()
        room_id = await c.room(alice_token, bob_token)
        event_id = await c.say(bob_token, room_id, "read me")
        async with (
            ws_connect(sqlite_server, alice_token) as ws,
            ws_connect(sqlite_server, bob_token) as bob,
        ):
            await ws.next()
            await bob.next()
            await bob.next_sync()
            assert (
                await ws.request(
                    "t", "typing", {"room_id": room_id, "typing": True, "timeout": 30_000}
                )
            )["result"] == {}
            assert (
                await ws.request(
                    "r",
                    "receipt",
                    {
                        "room_id": room_id,
                        "receipt_type": "m.read",
                        "event_id": event_id,
                    },
                )
            )["result"] == {}
            assert (
                await ws.request(
                    "p", "presence", {"presence": "unavailable", "status_msg": "lunch"}
                )
            )["result"] == {}
            bad = await ws.request("b", "typing", {"room_id": room_id, "typing": "yes"})
            assert bad["error"]["errcode"] == "M_BAD_JSON"
            # Bob's stream carries all three.
            seen: set[str] = set()
            while not {"m.typing", "m.receipt", "m.presence"} <= seen:
                frame = await bob.next_sync()
                room = frame.get("rooms", {}).get("join", {}).get(room_id, {})
                seen |= {
                    e["type"]
                    for e in room.get("ephemeral", {}).get("events", [])
                    if e["type"] != "m.typing" or alice in e["content"]["user_ids"]
                }
                seen |= {
                    e["type"]
                    for e in frame.get("presence", {}).get("events", [])
                    if e["sender"] == alice and e["content"]["presence"] == "unavailable"
                }


# --- bad input ----------------------------------------------------------------------------


async def test_bad_frames_get_error_frames(sqlite_server: ServerProcess) -> None:
    async with chat(sqlite_server) as c:
        _, token = await c.user()
        async with ws_connect(sqlite_server, token) as ws:
            await ws.next()
            await ws.next_sync()
            await ws.conn.send("{not json")
            assert (await ws.next())["error"]["errcode"] == "M_NOT_JSON"
            await ws.conn.send("[1, 2]")
            assert (await ws.next())["error"]["errcode"] == "M_BAD_JSON"
            await ws.conn.send(b"\x00\x01")
            assert (await ws.next())["error"]["errcode"] == "M_NOT_JSON"
            await ws.conn.send(json.dumps({"type": "dance"}))
            assert (await ws.next())["error"]["errcode"] == "M_UNRECOGNIZED"
            await ws.conn.send('{"id": "n", "method": "ping", "params": {"x": NaN}}')
            assert (await ws.next())["error"]["errcode"] == "M_NOT_JSON"
            unknown = await ws.request("u", "fly", {})
            assert unknown == {
                "id": "u",
                "error": {"errcode": "M_UNRECOGNIZED", "error": "Unknown method 'fly'"},
            }
            await ws.conn.send(json.dumps({"id": "m"}))
            assert (await ws.next())["error"]["errcode"] == "M_MISSING_PARAM"
            await ws.conn.send(json.dumps({"id": 7, "method": "ping"}))
            assert (await ws.next())["error"]["errcode"] == "M_BAD_JSON"
            bad_since = await ws.request("s", "sync", {"since": "yesterday"})
            assert bad_since["error"]["errcode"] == "M_INVALID_PARAM"
            # Still open and answering after all that.
            assert await ws.request("p", "ping", {}) == {"id": "p", "result": {}}
            await ws.conn.send(json.dumps({"type": "ping"}))
            assert await ws.next() == {"type": "pong"}
            # An oversized frame ends the connection: 1009, after an error frame.
            await ws.conn.send(
                json.dumps({"id": "big", "method": "ping", "params": {"pad": "x" * 131_072}})
            )
            code, _, frames = await ws.closed()
            assert code == 1009
            assert frames[-1]["error"]["errcode"] == "M_TOO_LARGE"


@pytest.mark.parametrize(
    ("how", "errcode"),
    [
        ("unknown token", "M_UNKNOWN_TOKEN"),
        ("token in the URL", "M_INVALID_PARAM"),
        ("bad header", "M_MISSING_TOKEN"),
        ("no auth frame", "M_MISSING_TOKEN"),
        ("bad auth frame", "M_UNKNOWN_TOKEN"),
    ],
)
async def test_bad_credentials_are_closed_4001(
    sqlite_server: ServerProcess, how: str, errcode: str
) -> None:
    async with chat(sqlite_server) as c:
        _, token = await c.user()
    headers: dict[str, str] = {}
    query = ""
    if how == "unknown token":
        headers = auth_header("mat_nope")
    elif how == "token in the URL":
        headers, query = auth_header(token), f"?access_token={token}"
    elif how == "bad header":
        headers = {"Authorization": f"Basic {token}"}
    async with connect(
        ws_url(sqlite_server, query), additional_headers=headers, proxy=None
    ) as conn:
        if how == "no auth frame":
            await conn.send(json.dumps({"id": "1", "method": "ping"}))
        elif how == "bad auth frame":
            await conn.send(json.dumps({"type": "auth", "access_token": "mat_nope"}))
        code, _, frames = await Ws(conn).closed()
    assert code == 4001
    assert [f["error"]["errcode"] for f in frames] == [errcode]


async def test_browser_auth_frame_and_bad_since(sqlite_server: ServerProcess) -> None:
    async with chat(sqlite_server) as c:
        user_id, token = await c.user()
    async with connect(ws_url(sqlite_server), proxy=None, max_size=None) as conn:
        await conn.send(json.dumps({"type": "auth", "access_token": token}))
        ws = Ws(conn)
        assert (await ws.next())["user_id"] == user_id
        assert "next_batch" in await ws.next_sync()
    async with ws_connect(sqlite_server, token, "?since=garbage") as ws:
        code, _, frames = await ws.closed()
    assert code == 4000
    assert frames[-1]["error"]["errcode"] == "M_INVALID_PARAM"


# --- heartbeats, presence, revocation -----------------------------------------------------


@pytest.mark.parametrize(
    "tuned_server",
    [
        {
            "websocket": {"ping_interval_ms": 200, "ping_timeout_ms": 600},
            "presence": {"offline_after_ms": 1000},
        }
    ],
    indirect=True,
)
async def test_heartbeats_presence_and_revocation(tuned_server: ServerProcess) -> None:
    async with chat(tuned_server) as c:
        alice, alice_token = await c.user()
        _, bob_token = await c.user()
        await c.room(alice_token, bob_token)

        async def alice_presence() -> str:
            r = await c.http.get(
                f"/_matrix/client/v3/presence/{alice}/status", headers=auth_header(bob_token)
            )
            return str(r.json()["presence"])

        # A peer that reads but never answers a ping is closed with 4002.
        async with ws_connect(tuned_server, alice_token) as ws:
            ws.answer_pings = False
            code, reason, frames = await ws.closed()
            assert code == 4002, reason
            assert {"type": "ping"} in frames

        # One that answers stays; its open socket keeps Alice online past offline_after_ms.
        async with ws_connect(tuned_server, alice_token) as ws:
            await ws.until_pings(10)
            assert await alice_presence() == "online"
            # Logging out revokes the token: the connection it opened ends at the next ping.
            r = await c.http.post("/_matrix/client/v3/logout", headers=auth_header(alice_token))
            assert r.status_code == 200
            code, _, frames = await ws.closed()
            assert code == 4001
            assert frames[-1]["error"]["errcode"] == "M_UNKNOWN_TOKEN"
        for _ in range(WAIT_S * 10):
            if await alice_presence() == "offline":
                break
            await asyncio.sleep(0.1)
        assert await alice_presence() == "offline"


# --- backpressure -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tuned_server",
    [
        {
            "websocket": {
                "max_queued_frames": 8,
                "ping_interval_ms": 60_000,
                "ping_timeout_ms": 30_000,
            }
        }
    ],
    indirect=True,
)
async def test_slow_reader_is_closed_4008_and_resumes(tuned_server: ServerProcess) -> None:
    """A client that stops reading is cut off with 4008 while another in the same room gets
    everything; the slow one then resumes from its last token and misses nothing."""
    total = 120
    pad = "x" * 60_000  # big frames (an event is at most 65 536 bytes) fill socket buffers
    expected = [f"m{i}" for i in range(total)]
    async with chat(tuned_server) as c:
        _, token = await c.user()
        _, fast_token = await c.user()
        room_id = await c.room(token, fast_token)
        # A small receive buffer and a one-frame client queue: this client really stops.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", tuned_server.port))
        async with (
            ws_connect(
                tuned_server,
                token,
                f"?filter={BIG_TIMELINE}",
                sock=sock,
                max_queue=1,
                compression=None,
            ) as slow,
            ws_connect(tuned_server, fast_token, f"?filter={BIG_TIMELINE}") as fast,
        ):
            await slow.next()
            since = (await slow.next_sync())["next_batch"]
            await fast.next()
            await fast.next_sync()

            async def fast_reads() -> list[str]:
                seen: list[str] = []
                while len(seen) < total:
                    seen += [b.split(" ")[0] for b in bodies(await fast.next_sync(), room_id)]
                return seen

            reader = asyncio.create_task(fast_reads())
            for body in expected:
                await c.say(token, room_id, f"{body} {pad}")
            assert await reader == expected

            code, reason, frames = await slow.closed()
            assert code == 4008, reason
            got = [
                b.split(" ")[0]
                for f in frames
                if f.get("type") == "sync"
                for b in bodies(f, room_id)
            ]
            assert len(got) < total  # it was cut off, not buffered without end
            assert got == expected[: len(got)]
            since = next(
                (f["next_batch"] for f in reversed(frames) if f.get("type") == "sync"), since
            )

        async with ws_connect(tuned_server, token, f"?filter={BIG_TIMELINE}&since={since}") as ws:
            await ws.next()
            while len(got) < total:
                got += [b.split(" ")[0] for b in bodies(await ws.next_sync(), room_id)]
        assert got == expected
