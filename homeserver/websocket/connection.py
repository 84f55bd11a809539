"""One WebSocket connection: its reader, sync loop, heartbeat and writer, and its outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.json_limits import loads_limited
from homeserver.core.jsonutil import dumps_str
from homeserver.core.render import dumps_items
from homeserver.core.streams import StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.sync.service import SyncRequest, has_news
from homeserver.websocket.protocol import (
    MAX_CLOSE_REASON_BYTES,
    SYNC_WAIT_MS,
    CloseCode,
    Request,
    SyncParams,
    Transport,
    TransportClosed,
    bearer_token,
    sync_params_from_query,
    validate,
)

if TYPE_CHECKING:
    from homeserver.websocket.service import WebSocketService

logger = logging.getLogger(__name__)

# Sliding sync requests pending at once on one connection (a client needs one, two while it
# changes its request).
MAX_SLIDING_REQUESTS = 2


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class _Outbox:
    """Frames for the writer. Bounded, except for the last words (an error, the close)."""

    def __init__(self, limit: int) -> None:
        self._items: deque[str | _Close] = deque()
        self._limit = limit
        self._ready = asyncio.Event()

    def put(self, frame: str) -> bool:
        if len(self._items) >= self._limit:
            return False
        self._items.append(frame)
        self._ready.set()
        return True

    def put_last(self, item: str | _Close) -> None:
        self._items.append(item)
        self._ready.set()

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> str | _Close:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


def _error_frame(error: MatrixError, request_id: str | None = None) -> JsonDict:
    """The answer to a request, or ``{"type": "error"}`` for a frame that is not one."""
    if request_id is not None:
        return {"id": request_id, "error": error.to_json()}
    return {"type": "error", "error": error.to_json()}


class Connection:
    def __init__(self, service: WebSocketService, transport: Transport) -> None:
        self._service = service
        self._transport = transport
        config = service.config
        self._ping_interval_s = config.ping_interval_ms / 1000
        self._ping_timeout_s = config.ping_timeout_ms / 1000
        self._max_frame_bytes = config.max_frame_bytes
        self._outbox = _Outbox(config.max_queued_frames)
        self._close: _Close | None = None
        self._closing = asyncio.Event()
        self._received = asyncio.Event()  # set by every frame: the peer is alive
        self._access_token = ""
        self._requester: Requester | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        # Sliding sync requests long-poll: each runs on its own, answered when ready, so
        # that the requests behind it are not held up.
        self._sliding_tasks: set[asyncio.Task[None]] = set()

    @property
    def queued_frames(self) -> int:
        """Frames waiting for the client (the one being written is no longer counted)."""
        return len(self._outbox)

    @property
    def close_code(self) -> int | None:
        return self._close.code if self._close else None

    # --- life cycle -------------------------------------------------------------------------

    async def run(
        self, authorization: str | None, token_in_url: bool, query: Mapping[str, str]
    ) -> None:
        writer = asyncio.create_task(self._write_loop())
        main = asyncio.create_task(self._main(authorization, token_in_url, query))
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({writer, main, closing}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            writer.cancel()  # the server is going away: it closes the socket itself
            raise
        finally:
            tasks = [t for t in (main, closing, self._sync_task, self._heartbeat_task) if t]
            tasks.extend(self._sliding_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        peer_gone = writer.done() or (
            main.done()
            and not main.cancelled()
            and main.exception() is None
            and self._close is None
        )
        if main.done() and not main.cancelled() and main.exception() is not None:
            logger.error(
                "websocket connection failed", exc_info=main.exception(), extra=self._log_fields()
            )
            self._shut(CloseCode.INTERNAL_ERROR, "internal error: resume from your token")
        if peer_gone:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        else:
            # What is queued (an error frame, say) goes out, then the close frame; a peer that
            # does not read by then is left to the server, which drops the connection.
            with contextlib.suppress(TimeoutError, TransportClosed):
                # asyncio.timeout, not wait_for: wait_for can swallow a cancellation (3.11).
                async with asyncio.timeout(self._ping_timeout_s):
                    await writer
        logger.info(
            "websocket closed",
            extra={**self._log_fields(), "code": self._close.code if self._close else None},
        )

    def _log_fields(self) -> dict[str, str]:
        if self._requester is None:
            return {}
        return {"user_id": self._requester.user_id, "device_id": self._requester.device_id}

    def _shut(
        self,
        code: CloseCode,
        reason: str,
        error: MatrixError | None = None,
        *,
        drop_queued: bool = False,
    ) -> None:
        """Close after what is queued (or instead of it), with ``error`` as the last frame."""
        if self._close is not None:
            return
        if drop_queued:
            self._outbox.clear()
        if error is not None:
            self._outbox.put_last(dumps_str(_error_frame(error)))
        reason_bytes = reason.encode()[:MAX_CLOSE_REASON_BYTES]
        self._close = _Close(int(code), reason_bytes.decode(errors="ignore"))
        self._outbox.put_last(self._close)
        self._closing.set()

    def _enqueue(self, frame: JsonDict) -> bool:
        """Queue a frame; a full outbox means the client stopped reading: close it."""
        if self._close is not None:
            return False
        try:
            text = dumps_items(frame, "websocket frame").decode()
        except MatrixError as e:
            # The frame is one item that cannot be rendered (a result of one event).
            request_id = frame.get("id")
            text = dumps_str(_error_frame(e, request_id if isinstance(request_id, str) else None))
        if self._outbox.put(text):
            return True
        logger.info("websocket client too slow", extra=self._log_fields())
        self._shut(
            CloseCode.TOO_SLOW, "too slow: resume from your last next_batch", drop_queued=True
        )
        return False

    async def _write_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, _Close):
                await self._transport.close(item.code, item.reason)
                return
            await self._transport.send(item)

    # --- reading ----------------------------------------------------------------------------

    async def _main(
        self, authorization: str | None, token_in_url: bool, query: Mapping[str, str]
    ) -> None:
        """Authenticate, start the stream, then answer frames until the peer goes away."""
        if not await self._authenticate(authorization, token_in_url):
            return
        assert self._requester is not None
        try:
            params = sync_params_from_query(query)
            req = await self._service.resolve(self._requester, params)
        except MatrixError as e:
            self._shut(CloseCode.BAD_REQUEST, f"{e.code}: bad sync parameters", e)
            return
        self._enqueue(
            {
                "type": "ready",
                "user_id": self._requester.user_id,
                "device_id": self._requester.device_id,
            }
        )
        if query.get("stream") != "none":  # a sliding sync client may do without it
            self._start_sync(req, params.set_presence)
        self._heartbeat_task = asyncio.create_task(self._heartbeat())
        while self._close is None:
            raw = await self._receive()
            if raw is None:
                return
            await self._handle(raw)

    async def _receive(self) -> str | None:
        """The next text frame within the size limit; None when the peer has gone."""
        while True:
            raw = await self._transport.receive()
            if raw is None:
                return None
            self._received.set()
            if isinstance(raw, bytes):
                self._enqueue(
                    {
                        "type": "error",
                        "error": {
                            "errcode": Codes.NOT_JSON,
                            "error": "Frames are JSON text, not binary",
                        },
                    }
                )
                continue
            if len(raw) > self._max_frame_bytes or len(raw.encode()) > self._max_frame_bytes:
                error = MatrixError(
                    Codes.TOO_LARGE, f"Frame is larger than {self._max_frame_bytes} bytes"
                )
                self._shut(CloseCode.TOO_LARGE, "frame too large", error)
                return None
            return raw

    async def _authenticate(self, authorization: str | None, token_in_url: bool) -> bool:
        try:
            if token_in_url:
                # Tokens in URLs end up in proxy and server logs; the spec dropped them too.
                raise MatrixError(
                    Codes.INVALID_PARAM,
                    "access_token in the URL is refused: "
                    "send an Authorization header or an auth frame",
                )
            token = bearer_token(authorization)
            if token is None:
                token = await self._auth_frame()
            self._requester = await self._service.authenticate(token)
            self._access_token = token
        except MatrixError as e:
            self._shut(CloseCode.UNAUTHORIZED, f"{e.code}: {e.message}", e)
            return False
        logger.info("websocket opened", extra=self._log_fields())
        return True

    async def _auth_frame(self) -> str:
        """A browser cannot set headers: its first frame is {"type": "auth", ...}."""
        try:
            async with asyncio.timeout(self._ping_timeout_s):
                raw = await self._receive()
        except TimeoutError:
            raise MatrixError(Codes.MISSING_TOKEN, "No auth frame in time") from None
        if raw is None:
            raise MatrixError(Codes.MISSING_TOKEN, "No auth frame")
        frame = _loads(raw)
        if not isinstance(frame, dict) or frame.get("type") != "auth":
            raise MatrixError(
                Codes.MISSING_TOKEN, "Expected an Authorization header or an auth frame"
            )
        token = frame.get("access_token")
        if not isinstance(token, str) or not token:
            raise MatrixError(Codes.MISSING_TOKEN, "auth frame without access_token")
        return token

    async def _handle(self, raw: str) -> None:
        frame = _loads(raw)
        if isinstance(frame, MatrixError):
            self._enqueue({"type": "error", "error": frame.to_json()})
            return
        if not isinstance(frame, dict):
            self._enqueue(
                {
                    "type": "error",
                    "error": {"errcode": Codes.BAD_JSON, "error": "Frame must be a JSON object"},
                }
            )
            return
        if "id" not in frame:
            kind = frame.get("type")
            if kind == "ping":
                self._enqueue({"type": "pong"})
            elif kind == "auth":
                self._enqueue(_error_frame(MatrixError(Codes.BAD_JSON, "Already authenticated")))
            elif kind != "pong":
                self._enqueue(
                    {
                        "type": "error",
                        "error": {
                            "errcode": Codes.UNRECOGNIZED,
                            "error": f"Unknown frame type {kind!r}: "
                            "expected a request, ping or pong",
                        },
                    }
                )
            return
        request_id = frame["id"] if isinstance(frame["id"], str) else None
        try:
            request = validate(frame, Request, "frame")
            if request.method == "sliding_sync":
                self._start_sliding(request)
                return
            result = await self._call(request)
        except MatrixError as e:
            self._enqueue(_error_frame(e, request_id))
            return
        except Exception:
            # A bug answers this request, not the connection: the others still work.
            logger.exception(
                "websocket request failed",
                extra={**self._log_fields(), "method": frame.get("method")},
            )
            self._enqueue(
                _error_frame(MatrixError(Codes.UNKNOWN, "Internal server error"), request_id)
            )
            return
        self._enqueue({"id": request.id, "result": result})

    async def _call(self, request: Request) -> JsonDict:
        assert self._requester is not None
        if request.method == "ping":
            return {}
        if request.method == "sync":
            params = validate(request.params, SyncParams)
            req = await self._service.resolve(self._requester, params)
            self._start_sync(req, params.set_presence)
            return {}
        method = self._service.methods.get(request.method)
        if method is None:
            raise MatrixError(Codes.UNRECOGNIZED, f"Unknown method {request.method!r}")
        return await method(self._requester, request.params)

    def _start_sliding(self, request: Request) -> None:
        if len(self._sliding_tasks) >= MAX_SLIDING_REQUESTS:
            raise MatrixError(
                Codes.LIMIT_EXCEEDED, f"At most {MAX_SLIDING_REQUESTS} sliding_sync at a time"
            )
        task = asyncio.create_task(self._sliding(request))
        self._sliding_tasks.add(task)
        task.add_done_callback(self._sliding_tasks.discard)

    async def _sliding(self, request: Request) -> None:
        assert self._requester is not None
        try:
            result = await self._service.sliding_sync(self._requester, request.params)
        except MatrixError as e:
            self._enqueue(_error_frame(e, request.id))
            return
        except Exception:
            logger.exception("websocket sliding sync failed", extra=self._log_fields())
            self._enqueue(
                _error_frame(MatrixError(Codes.UNKNOWN, "Internal server error"), request.id)
            )
            return
        self._enqueue({"id": request.id, "result": result})

    # --- the stream and the heartbeat -------------------------------------------------------

    def _start_sync(self, req: SyncRequest, set_presence: str) -> None:
        """(Re)start the stream; frames of the old one already queued go out before."""
        if self._sync_task is not None:
            self._sync_task.cancel()
        self._sync_task = asyncio.create_task(self._sync_loop(req, set_presence))
        self._sync_task.add_done_callback(self._sync_done)

    def _sync_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, MatrixError):
            self._shut(CloseCode.BAD_REQUEST, f"{error.code}: sync failed", error)
        elif error is not None:
            logger.error("websocket sync failed", exc_info=error, extra=self._log_fields())
            self._shut(CloseCode.INTERNAL_ERROR, "internal error: resume from your token")

    async def _sync_loop(self, req: SyncRequest, set_presence: str) -> None:
        requester = self._requester
        assert requester is not None
        first = True
        async with self._service.online(requester, set_presence):
            while True:
                response = await self._service.sync(requester, req)
                # An initial sync is always sent (it is the client's starting point); after
                # that only batches with something in them.
                if first and req.since is None or has_news(response):
                    if not self._enqueue({"type": "sync", **response}):
                        return
                first = False
                req = SyncRequest(
                    StreamToken.parse(response["next_batch"]), SYNC_WAIT_MS, False, req.filter
                )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval_s)
            try:
                # A token revoked (logout, deactivation) ends the connections it opened.
                await self._service.authenticate(self._access_token)
            except MatrixError as e:
                self._shut(CloseCode.UNAUTHORIZED, f"{e.code}: {e.message}", e)
                return
            self._received.clear()
            if not self._enqueue({"type": "ping"}):
                return
            try:
                async with asyncio.timeout(self._ping_timeout_s):
                    await self._received.wait()
            except TimeoutError:
                self._shut(
                    CloseCode.HEARTBEAT_TIMEOUT,
                    f"no frame within {self._ping_timeout_s * 1000:.0f} ms of a ping",
                )
                return


def _loads(raw: str) -> Any:
    """The frame, or the ``MatrixError`` that refuses it (not JSON, past the JSON limits)."""
    try:
        return loads_limited(raw)
    except MatrixError as e:
        if e.code == Codes.NOT_JSON:
            return MatrixError(Codes.NOT_JSON, "Frame is not valid JSON")
        return e
