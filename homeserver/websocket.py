"""The WebSocket sync transport: one long-lived connection pushing what ``/sync`` returns.

The protocol (docs/websocket.md) lives here, free of any web framework: the route hands a
``Transport`` (receive a text frame, send one, close) to ``WebSocketService.serve``. A
connection is a loop of ``SyncService.sync`` calls, each starting from the last
``next_batch``, so a frame is exactly a ``/sync`` response and a client that reconnects with
its last token gets what it missed, no more, no less. Nothing is computed twice: the sync
service already waits on the notifier.

Each connection has four tasks: a reader (frames from the client, requests answered in
order), a sync loop, a heartbeat and a writer. Everything the client gets goes through one
bounded outbox; a client that stops reading fills it and is closed (4008), so it costs at
most ``max_queued_frames`` frames of memory and never slows anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from homeserver.auth import AuthService
from homeserver.config import WebSocketConfig
from homeserver.errors import Codes, MatrixError
from homeserver.filtering import SyncFilter
from homeserver.filters import FilterService
from homeserver.ids import EventID, RoomID, UserID
from homeserver.jsonutil import dumps_str
from homeserver.presence import PresenceService
from homeserver.ratelimit import Action, RateLimiter
from homeserver.receipts import ReceiptService
from homeserver.rooms.service import RoomService
from homeserver.streams import StreamToken
from homeserver.sync.service import SyncRequest, SyncService
from homeserver.types import JsonDict, Requester
from homeserver.typing_notifications import TypingService

logger = logging.getLogger(__name__)

# The path, under /_matrix/client; "org.homeserver.ws" is the unstable feature name that
# /versions advertises.
UNSTABLE_FEATURE = "org.homeserver.ws"
PATH = f"/unstable/{UNSTABLE_FEATURE}/v1/sync"
# One SyncService.sync call waits this long for news; an empty answer is not sent, the loop
# just asks again from the same position.
SYNC_WAIT_MS = 30_000
# RFC 6455: a close reason is at most 123 bytes.
MAX_CLOSE_REASON_BYTES = 123


class CloseCode(IntEnum):
    """Why the server closed a connection (4000-4999 are ours, RFC 6455 section 7.4.2)."""

    NORMAL = 1000
    TOO_LARGE = 1009  # a frame over max_frame_bytes
    INTERNAL_ERROR = 1011  # a bug or the database is down: reconnect with your token
    BAD_REQUEST = 4000  # the sync parameters given at connect are invalid
    UNAUTHORIZED = 4001  # no token, a token in the URL, an unknown or revoked one
    HEARTBEAT_TIMEOUT = 4002  # nothing received for ping_timeout_ms after a ping
    TOO_SLOW = 4008  # the outbox is full: reconnect and resume from your last next_batch


class TransportClosed(Exception):
    """The connection is gone; raised by a ``Transport`` that can no longer send."""


class Transport(Protocol):
    async def receive(self) -> str | bytes | None:
        """The next frame; None once the peer has closed the connection."""

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


# --- request parameters: strict, like HTTP request bodies ---------------------------------


class Params(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


ParamsT = TypeVar("ParamsT", bound=Params)
Presence = Literal["online", "offline", "unavailable"]


class SyncParams(Params):
    since: str | None = None
    filter: str | dict[str, Any] | None = None  # a filter ID or an inline filter
    full_state: bool = False
    set_presence: Presence = "online"


class SendParams(Params):
    room_id: str
    event_type: str
    txn_id: str
    content: dict[str, Any]


class TypingParams(Params):
    room_id: str
    typing: bool
    timeout: int | None = Field(default=None, ge=0)  # ms; optional when typing is false


class ReceiptParams(Params):
    room_id: str
    receipt_type: str
    event_id: str
    thread_id: str | None = None  # absent: an unthreaded receipt


class PresenceParams(Params):
    presence: Presence
    status_msg: str | None = None


class Request(Params):
    id: str
    method: str
    params: dict[str, Any] = {}


def validate(data: Mapping[str, Any], model: type[ParamsT], where: str = "params") -> ParamsT:
    """The same errors as an HTTP body: ``M_MISSING_PARAM`` or ``M_BAD_JSON`` with its path."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        path = ".".join([where, *(str(p) for p in first["loc"])])
        if first["type"] == "missing":
            raise MatrixError(Codes.MISSING_PARAM, f"Missing parameter: {path}") from e
        raise MatrixError(Codes.BAD_JSON, f"Invalid parameter {path}: {first['msg']}") from e


def sync_params_from_query(query: Mapping[str, str]) -> SyncParams:
    """The connect URL's query takes /sync's parameters (``timeout`` is meaningless here)."""
    full_state = query.get("full_state", "false")
    if full_state not in ("true", "false"):
        raise MatrixError(Codes.INVALID_PARAM, "full_state must be true or false")
    data: dict[str, Any] = {"full_state": full_state == "true"}
    for key in ("since", "filter", "set_presence"):
        if query.get(key):
            data[key] = query[key]
    return validate(data, SyncParams, "query")


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MatrixError(Codes.MISSING_TOKEN, "Invalid Authorization header")
    return token.strip()


# --- the service -------------------------------------------------------------------------


Method = Callable[[Requester, JsonDict], Awaitable[JsonDict]]


class WebSocketService:
    def __init__(self, config: WebSocketConfig, auth: AuthService, sync: SyncService,
                 filters: FilterService, rooms: RoomService, ratelimiter: RateLimiter,
                 typing: TypingService, receipts: ReceiptService,
                 presence: PresenceService) -> None:
        self.config = config
        self._auth = auth
        self._sync = sync
        self._filters = filters
        self._rooms = rooms
        self._ratelimiter = ratelimiter
        self._typing = typing
        self._receipts = receipts
        self._presence = presence
        # Request methods besides sync and ping (which act on the connection itself).
        self.methods: dict[str, Method] = {"send": self._send, "typing": self._set_typing,
                                           "receipt": self._post_receipt,
                                           "presence": self._set_presence}
        self.open_connections = 0

    async def serve(self, transport: Transport, *, authorization: str | None,
                    token_in_url: bool, query: Mapping[str, str]) -> None:
        """Run one connection, already accepted, until either side closes it."""
        self.open_connections += 1
        try:
            await Connection(self, transport).run(authorization, token_in_url, query)
        finally:
            self.open_connections -= 1

    async def authenticate(self, access_token: str) -> Requester:
        return await self._auth.get_requester(access_token)

    async def resolve(self, requester: Requester, params: SyncParams) -> SyncRequest:
        """Parse the token, fetch the filter: errors now, before any stream (re)starts."""
        since = StreamToken.parse(params.since) if params.since else None
        if params.filter is None:
            sync_filter = SyncFilter()
        elif isinstance(params.filter, dict):
            sync_filter = SyncFilter.from_json(params.filter)
        elif params.filter.startswith("{"):
            try:
                sync_filter = SyncFilter.from_json(orjson.loads(params.filter))
            except orjson.JSONDecodeError:
                raise MatrixError(Codes.BAD_JSON, "filter is not valid JSON") from None
        else:
            sync_filter = SyncFilter.from_json(
                await self._filters.get_filter(UserID(requester.user_id), params.filter))
        return SyncRequest(since=since, timeout_ms=SYNC_WAIT_MS, full_state=params.full_state,
                           filter=sync_filter)

    async def sync(self, requester: Requester, req: SyncRequest) -> JsonDict:
        return await self._sync.sync(requester, req)

    def online(self, requester: Requester, set_presence: str) -> AbstractAsyncContextManager[None]:
        """Presence counts an open stream as a connected client, as it does a long-poll."""
        return self._presence.syncing(requester, set_presence)

    async def _send(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As PUT /rooms/{roomId}/send/{eventType}/{txnId}: same limit, same idempotency."""
        params = validate(raw, SendParams)
        room_id = RoomID.parse(params.room_id)
        self._ratelimiter.check(Action.MESSAGE, requester.user_id)
        event_id = await self._rooms.send_event(requester, room_id, params.event_type,
                                                params.txn_id, params.content)
        return {"event_id": event_id}

    async def _set_typing(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As PUT /rooms/{roomId}/typing/{userId}, for the connection's own user."""
        params = validate(raw, TypingParams)
        await self._typing.set_typing(requester, RoomID.parse(params.room_id),
                                      requester.user_id, params.typing, params.timeout)
        return {}

    async def _post_receipt(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As POST /rooms/{roomId}/receipt/{receiptType}/{eventId}."""
        params = validate(raw, ReceiptParams)
        if params.thread_id == "":
            raise MatrixError(Codes.INVALID_PARAM, "thread_id must be a non-empty string")
        await self._receipts.post_receipt(requester, RoomID.parse(params.room_id),
                                          params.receipt_type, EventID.parse(params.event_id),
                                          params.thread_id)
        return {}

    async def _set_presence(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As PUT /presence/{userId}/status, for the connection's own user."""
        params = validate(raw, PresenceParams)
        await self._presence.set_presence(
            requester, requester.user_id, params.presence, params.status_msg,
            status_msg_given="status_msg" in params.model_fields_set)
        return {}


# --- one connection ----------------------------------------------------------------------


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

    # --- life cycle -------------------------------------------------------------------------

    async def run(self, authorization: str | None, token_in_url: bool,
                  query: Mapping[str, str]) -> None:
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
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        peer_gone = writer.done() or (main.done() and not main.cancelled()
                                      and main.exception() is None and self._close is None)
        if main.done() and not main.cancelled() and main.exception() is not None:
            logger.error("websocket connection failed", exc_info=main.exception(),
                         extra=self._log_fields())
            self._shut(CloseCode.INTERNAL_ERROR, "internal error: resume from your token")
        if peer_gone:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        else:
            # What is queued (an error frame, say) goes out, then the close frame; a peer that
            # does not read by then is left to the server, which drops the connection.
            with contextlib.suppress(TimeoutError, TransportClosed):
                await asyncio.wait_for(writer, self._ping_timeout_s)
        logger.info("websocket closed", extra={
            **self._log_fields(), "code": self._close.code if self._close else None})

    def _log_fields(self) -> dict[str, str]:
        if self._requester is None:
            return {}
        return {"user_id": self._requester.user_id, "device_id": self._requester.device_id}

    def _shut(self, code: CloseCode, reason: str, error: MatrixError | None = None, *,
              drop_queued: bool = False) -> None:
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
        if self._outbox.put(dumps_str(frame)):
            return True
        logger.info("websocket client too slow", extra=self._log_fields())
        self._shut(CloseCode.TOO_SLOW, "too slow: resume from your last next_batch",
                   drop_queued=True)
        return False

    async def _write_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, _Close):
                await self._transport.close(item.code, item.reason)
                return
            await self._transport.send(item)

    # --- reading ----------------------------------------------------------------------------

    async def _main(self, authorization: str | None, token_in_url: bool,
                    query: Mapping[str, str]) -> None:
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
        self._enqueue({"type": "ready", "user_id": self._requester.user_id,
                       "device_id": self._requester.device_id})
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
                self._enqueue({"type": "error", "error": {
                    "errcode": Codes.NOT_JSON, "error": "Frames are JSON text, not binary"}})
                continue
            if len(raw) > self._max_frame_bytes or len(raw.encode()) > self._max_frame_bytes:
                error = MatrixError(Codes.TOO_LARGE,
                                    f"Frame is larger than {self._max_frame_bytes} bytes")
                self._shut(CloseCode.TOO_LARGE, "frame too large", error)
                return None
            return raw

    async def _authenticate(self, authorization: str | None, token_in_url: bool) -> bool:
        try:
            if token_in_url:
                # Tokens in URLs end up in proxy and server logs; the spec dropped them too.
                raise MatrixError(Codes.INVALID_PARAM, "access_token in the URL is refused: "
                                  "send an Authorization header or an auth frame")
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
            raw = await asyncio.wait_for(self._receive(), self._ping_timeout_s)
        except TimeoutError:
            raise MatrixError(Codes.MISSING_TOKEN, "No auth frame in time") from None
        if raw is None:
            raise MatrixError(Codes.MISSING_TOKEN, "No auth frame")
        frame = _loads(raw)
        if not isinstance(frame, dict) or frame.get("type") != "auth":
            raise MatrixError(Codes.MISSING_TOKEN,
                              "Expected an Authorization header or an auth frame")
        token = frame.get("access_token")
        if not isinstance(token, str) or not token:
            raise MatrixError(Codes.MISSING_TOKEN, "auth frame without access_token")
        return token

    async def _handle(self, raw: str) -> None:
        frame = _loads(raw)
        if frame is _NOT_JSON:
            self._enqueue({"type": "error", "error": {
                "errcode": Codes.NOT_JSON, "error": "Frame is not valid JSON"}})
            return
        if not isinstance(frame, dict):
            self._enqueue({"type": "error", "error": {
                "errcode": Codes.BAD_JSON, "error": "Frame must be a JSON object"}})
            return
        if "id" not in frame:
            kind = frame.get("type")
            if kind == "ping":
                self._enqueue({"type": "pong"})
            elif kind == "auth":
                self._enqueue(_error_frame(MatrixError(Codes.BAD_JSON, "Already authenticated")))
            elif kind != "pong":
                self._enqueue({"type": "error", "error": {
                    "errcode": Codes.UNRECOGNIZED,
                    "error": f"Unknown frame type {kind!r}: expected a request, ping or pong"}})
            return
        request_id = frame["id"] if isinstance(frame["id"], str) else None
        try:
            request = validate(frame, Request, "frame")
            result = await self._call(request)
        except MatrixError as e:
            self._enqueue(_error_frame(e, request_id))
            return
        except Exception:
            # A bug answers this request, not the connection: the others still work.
            logger.exception("websocket request failed",
                             extra={**self._log_fields(), "method": frame.get("method")})
            self._enqueue(_error_frame(MatrixError(Codes.UNKNOWN, "Internal server error"),
                                       request_id))
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
                if first and req.since is None or len(response) > 1:
                    if not self._enqueue({"type": "sync", **response}):
                        return
                first = False
                req = SyncRequest(StreamToken.parse(response["next_batch"]), SYNC_WAIT_MS,
                                  False, req.filter)

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
                await asyncio.wait_for(self._received.wait(), self._ping_timeout_s)
            except TimeoutError:
                self._shut(CloseCode.HEARTBEAT_TIMEOUT,
                           f"no frame within {self._ping_timeout_s * 1000:.0f} ms of a ping")
                return


_NOT_JSON = object()


def _loads(raw: str) -> Any:
    try:
        # orjson refuses NaN, Infinity and integers past 64 bits, as Matrix JSON must.
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _NOT_JSON
