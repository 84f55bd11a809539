"""A minimal Matrix client over aiohttp: only the public Client-Server API."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import httptools
import orjson

LONG_POLL_MS = 30_000
# Only for the first token of a listener: no rooms, so it is cheap on both servers.
PRIME_FILTER = orjson.dumps(
    {"room": {"rooms": []}, "presence": {"types": []}, "account_data": {"types": []}}
).decode()


class MatrixCallError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:300]}")
        self.status = status


@dataclass
class User:
    localpart: str
    user_id: str
    access_token: str


class Matrix:
    """Calls one server's client API; one connection pool for every simulated user."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        timeout_s: float = 120,
        ok: tuple[int, ...] = (200,),
        retry_limited: bool = True,
    ) -> tuple[int, Any, int]:
        """One request; returns ``(status, parsed body, body bytes)``.

        A 429 is waited out and retried (setup only: rate limits are raised on both servers).
        """
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = orjson.dumps(body) if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        while True:
            async with self.session.request(
                method,
                self.base_url + path,
                data=data,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                raw = await response.read()
                status = response.status
            if status == 429 and retry_limited:
                wait_ms = orjson.loads(raw).get("retry_after_ms", 1000) if raw else 1000
                await asyncio.sleep(min(wait_ms, 10_000) / 1000)
                continue
            if status not in ok:
                raise MatrixCallError(method, path, status, raw.decode(errors="replace"))
            return status, orjson.loads(raw) if raw else None, len(raw)

    async def register(self, localpart: str, password: str) -> User:
        body: dict[str, Any] = {
            "username": localpart,
            "password": password,
            "auth": {"type": "m.login.dummy"},
            "initial_device_display_name": "bench",
        }
        status, data, _ = await self.call(
            "POST", "/_matrix/client/v3/register", body=body, ok=(200, 401)
        )
        if status == 401:
            # A server that insists on a UIA session first: complete the stage inside it.
            body["auth"] = {"type": "m.login.dummy", "session": data["session"]}
            _, data, _ = await self.call("POST", "/_matrix/client/v3/register", body=body)
        return User(localpart, data["user_id"], data["access_token"])

    async def login(self, localpart: str, password: str) -> str:
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        }
        _, data, _ = await self.call("POST", "/_matrix/client/v3/login", body=body)
        return str(data["access_token"])

    async def create_room(self, user: User, **body: Any) -> str:
        _, data, _ = await self.call(
            "POST", "/_matrix/client/v3/createRoom", token=user.access_token, body=body
        )
        return str(data["room_id"])

    async def join(self, user: User, room_id: str) -> None:
        await self.call(
            "POST",
            f"/_matrix/client/v3/join/{quote(room_id, safe='')}",
            token=user.access_token,
            body={},
        )

    async def send_text(self, user: User, room_id: str, text: str) -> str:
        txn = uuid.uuid4().hex
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/{txn}"
        _, data, _ = await self.call(
            "PUT",
            path,
            token=user.access_token,
            body={"msgtype": "m.text", "body": text},
            retry_limited=False,
        )
        return str(data["event_id"])

    async def sync(
        self,
        user: User,
        *,
        since: str | None = None,
        timeout_ms: int = 0,
        filter_: str | None = None,
    ) -> tuple[dict[str, Any], int]:
        params = {"timeout": str(timeout_ms)}
        if since is not None:
            params["since"] = since
        if filter_ is not None:
            params["filter"] = filter_
        _, data, size = await self.call(
            "GET",
            "/_matrix/client/v3/sync",
            token=user.access_token,
            params=params,
            timeout_s=timeout_ms / 1000 + 120,
        )
        return data, size

    async def upload(
        self,
        user: User,
        data: bytes | AsyncIterable[bytes],
        size: int,
        content_type: str,
        filename: str,
        timeout_s: float = 300,
    ) -> str:
        """POST /_matrix/media/v3/upload; returns the ``mxc://`` URI. The length is always
        declared (Synapse refuses an upload without one), also for a streamed body."""
        path = "/_matrix/media/v3/upload"
        headers = {
            "Authorization": f"Bearer {user.access_token}",
            "Content-Type": content_type,
            "Content-Length": str(size),
        }
        async with self.session.post(
            self.base_url + path,
            data=data,
            params={"filename": filename},
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            raw = await response.read()
            if response.status != 200:
                raise MatrixCallError("POST", path, response.status, raw.decode(errors="replace"))
        return str(orjson.loads(raw)["content_uri"])

    async def media(
        self,
        user: User,
        kind: str,
        mxc: str,
        params: Mapping[str, str] | None = None,
        timeout_s: float = 300,
    ) -> tuple[bytes, str]:
        """GET /_matrix/client/v1/media/{kind}/{serverName}/{mediaId} (authenticated media;
        ``kind`` is ``download`` or ``thumbnail``); returns the body and its Content-Type."""
        server_name, _, media_id = mxc.removeprefix("mxc://").partition("/")
        path = (
            f"/_matrix/client/v1/media/{kind}/{quote(server_name, safe='')}/"
            f"{quote(media_id, safe='')}"
        )
        async with self.session.get(
            self.base_url + path,
            params=params,
            headers={"Authorization": f"Bearer {user.access_token}"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            raw = await response.read()
            if response.status != 200:
                raise MatrixCallError("GET", path, response.status, raw.decode(errors="replace"))
            return raw, response.headers.get("Content-Type", "")


async def wait_for_all(
    listeners: Sequence[Listener], event_id: str, timeout_s: float
) -> list[float | None]:
    """When each listener received ``event_id`` (None: not within ``timeout_s``). One
    future for all of them, not a task each: the client's work when a send returns runs
    while the deliveries it measures come in."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = len(listeners)

    def arrived() -> None:
        nonlocal left
        left -= 1
        if left == 0 and not done.done():
            done.set_result(None)

    for listener in listeners:
        listener.on_arrival(event_id, arrived)
    if listeners:
        try:
            await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            pass
    return [listener.arrivals.get(event_id) for listener in listeners]


def timeline_event_ids(sync_body: Mapping[str, Any]) -> list[str]:
    """Event IDs in the joined rooms' timelines of a /sync response."""
    ids: list[str] = []
    for room in sync_body.get("rooms", {}).get("join", {}).values():
        for event in room.get("timeline", {}).get("events", []):
            event_id = event.get("event_id")
            if isinstance(event_id, str):
                ids.append(event_id)
    return ids


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one user's requests, one at a time.

    The long-poll listeners' and the throughput senders' own client, leaner than aiohttp's
    per-request machinery: a fan-out to hundreds of members is received by this one
    process, and what it spends per response delays the responses behind it, which would
    be measured as the server's latency; senders back to back compete with the server for
    the machine's cores. A response's time is taken when its last byte has been parsed
    (httptools), before its JSON is decoded.
    """

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._body: list[bytes] = []
        self._pending: asyncio.Future[tuple[int, bytes, float]] | None = None
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not registered as an asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionError(f"bad HTTP response: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("connection closed by the server"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        arrived = time.perf_counter()
        status = self._parser.get_status_code()
        body = b"".join(self._body)
        self._body = []
        if not self._parser.should_keep_alive():
            self.close()
        if self._pending is not None and not self._pending.done():
            self._pending.set_result((status, body, arrived))

    def _fail(self, error: Exception) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(error)

    async def request(self, data: bytes, timeout_s: float) -> tuple[int, bytes, float]:
        """Sends a whole request; ``(status, body, perf_counter at arrival)``."""
        assert self._transport is not None
        self._pending = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return await asyncio.wait_for(self._pending, timeout_s)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class LeanClient:
    """One user's requests on a ``_Connection`` of their own, opened on first use."""

    def __init__(self, mx: Matrix, user: User) -> None:
        self.user = user
        url = urlsplit(mx.base_url)
        self._host, self._port, self._netloc = (
            url.hostname or "127.0.0.1",
            url.port or 80,
            url.netloc,
        )
        self._conn: _Connection | None = None

    async def call(
        self, method: str, path: str, body: bytes | None = None, timeout_s: float = 120
    ) -> tuple[bytes, float]:
        """``(response body, perf_counter at arrival)``; raises ``MatrixCallError`` on a
        status other than 200."""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._netloc}\r\n"
            f"Authorization: Bearer {self.user.access_token}\r\n"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode() + (body or b"")
        reused = self._conn is not None and not self._conn.closed
        while True:
            if self._conn is None or self._conn.closed:
                _, self._conn = await asyncio.get_running_loop().create_connection(
                    _Connection, self._host, self._port
                )
            try:
                status, raw, arrived = await self._conn.request(data, timeout_s)
                break
            except ConnectionError:
                # A kept connection the server closed meanwhile: once more on a new one.
                if not reused:
                    raise
                reused = False
            except BaseException:
                self.close()  # mid-request: the connection cannot be reused
                raise
        if status != 200:
            raise MatrixCallError(method, path, status, raw.decode(errors="replace"))
        return raw, arrived

    async def send_text(self, room_id: str, text: str) -> str:
        path = (
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/"
            f"{uuid.uuid4().hex}"
        )
        raw, _ = await self.call("PUT", path, orjson.dumps({"msgtype": "m.text", "body": text}))
        return str(orjson.loads(raw)["event_id"])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class Listener:
    """One user's long-poll loop: a filter-less ``/sync?since=…&timeout=30000`` on a
    connection of its own (``LeanClient``).

    Records when each event ID first arrives (``time.perf_counter()`` when the response has
    been received), so a sender can wait for the very event it sent.
    """

    def __init__(self, mx: Matrix, user: User) -> None:
        self.mx = mx
        self.user = user
        self.since: str | None = None
        self.arrivals: dict[str, float] = {}
        self.errors = 0
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._client = LeanClient(mx, user)

    async def prime(self) -> None:
        body, _ = await self.mx.sync(self.user, filter_=PRIME_FILTER)
        self.since = body["next_batch"]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _long_poll(self) -> tuple[dict[str, Any], float]:
        query = urlencode({"timeout": LONG_POLL_MS, "since": self.since or ""})
        raw, arrived = await self._client.call(
            "GET", f"/_matrix/client/v3/sync?{query}", timeout_s=LONG_POLL_MS / 1000 + 120
        )
        return orjson.loads(raw), arrived

    async def _run(self) -> None:
        while True:
            try:
                body, now = await self._long_poll()
            except (TimeoutError, OSError, MatrixCallError, orjson.JSONDecodeError):
                self.errors += 1
                self._client.close()
                await asyncio.sleep(0.5)
                continue
            self.since = body["next_batch"]
            for event_id in timeline_event_ids(body):
                if event_id not in self.arrivals:
                    self.arrivals[event_id] = now
                    for callback in self._callbacks.pop(event_id, ()):
                        callback()

    async def wait_for(self, event_id: str, timeout_s: float) -> float | None:
        """When ``event_id`` arrived (perf_counter), or None if not within ``timeout_s``."""
        return (await wait_for_all([self], event_id, timeout_s))[0]

    def on_arrival(self, event_id: str, callback: Callable[[], None]) -> None:
        """Calls ``callback`` when ``event_id`` arrives (now, if it has)."""
        if event_id in self.arrivals:
            callback()
        else:
            self._callbacks.setdefault(event_id, []).append(callback)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._client.close()
