"""The WebSocket service: authenticates, resolves sync parameters, answers the requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager

from homeserver.accounts.tokens import AuthService
from homeserver.core.config import WebSocketConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID, UserID
from homeserver.core.json_limits import query_json
from homeserver.core.streams import StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.ephemeral.presence import PresenceService
from homeserver.ephemeral.receipts import ReceiptService
from homeserver.ephemeral.typing import TypingService
from homeserver.filters.matching import SyncFilter
from homeserver.filters.service import FilterService
from homeserver.rooms.delayed import DelayedEventService
from homeserver.rooms.send import SendService
from homeserver.sync.service import SyncRequest, SyncService
from homeserver.sync.sliding.body import parse_request
from homeserver.sync.sliding.service import SlidingSyncService
from homeserver.sync.sliding.state import Position
from homeserver.websocket.connection import Connection
from homeserver.websocket.protocol import (
    SYNC_WAIT_MS,
    DelayedEventParams,
    PresenceParams,
    ReceiptParams,
    SendParams,
    SlidingParams,
    SyncParams,
    Transport,
    TypingParams,
    validate,
)

Method = Callable[[Requester, JsonDict], Awaitable[JsonDict]]


class WebSocketService:
    def __init__(
        self,
        config: WebSocketConfig,
        auth: AuthService,
        sync: SyncService,
        filters: FilterService,
        sending: SendService,
        typing: TypingService,
        receipts: ReceiptService,
        presence: PresenceService,
        sliding: SlidingSyncService,
        delayed: DelayedEventService,
    ) -> None:
        self.config = config
        self._auth = auth
        self._sync = sync
        self._filters = filters
        self._sending = sending
        self._typing = typing
        self._receipts = receipts
        self._presence = presence
        self._sliding = sliding
        self._delayed = delayed
        # Request methods besides sync and ping (which act on the connection itself).
        self.methods: dict[str, Method] = {
            "send": self._send,
            "typing": self._set_typing,
            "receipt": self._post_receipt,
            "presence": self._set_presence,
            "delayed_events": self._list_delayed,
            "delayed_event": self._act_on_delayed,
        }
        self.connections: set[Connection] = set()  # open on this worker

    async def serve(
        self,
        transport: Transport,
        *,
        authorization: str | None,
        token_in_url: bool,
        query: Mapping[str, str],
    ) -> None:
        """Run one connection, already accepted, until either side closes it."""
        connection = Connection(self, transport)
        self.connections.add(connection)
        try:
            await connection.run(authorization, token_in_url, query)
        finally:
            self.connections.discard(connection)

    def shut_down(self) -> None:
        """At shut-down: every open connection closes (1001) after what is queued."""
        for connection in list(self.connections):
            connection.going_away()

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
            sync_filter = SyncFilter.from_json(query_json(params.filter, "filter"))
        else:
            sync_filter = SyncFilter.from_json(
                await self._filters.get_filter(UserID(requester.user_id), params.filter)
            )
        return SyncRequest(
            since=since, timeout_ms=SYNC_WAIT_MS, full_state=params.full_state, filter=sync_filter
        )

    async def sync(self, requester: Requester, req: SyncRequest) -> JsonDict:
        return await self._sync.sync(requester, req)

    async def sliding_sync(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As POST .../org.matrix.simplified_msc3575/sync: ``params`` is its body, with
        ``pos`` and ``timeout`` (ms, at most the stream's wait) beside the body's fields."""
        params = validate(raw, SlidingParams)
        pos = Position.parse(params.pos) if params.pos else None
        req = parse_request(raw, "params")
        timeout = min(params.timeout or 0, SYNC_WAIT_MS)
        async with self._presence.syncing(requester, "online"):
            return await self._sliding.sync(requester, req, pos, timeout)

    def online(self, requester: Requester, set_presence: str) -> AbstractAsyncContextManager[None]:
        """Presence counts an open stream as a connected client, as it does a long-poll."""
        return self._presence.syncing(requester, set_presence)

    async def _list_delayed(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As GET /unstable/org.matrix.msc4140/delayed_events."""
        return {"delayed_events": await self._delayed.list_for_user(requester)}

    async def _act_on_delayed(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As POST /unstable/org.matrix.msc4140/delayed_events/{delay_id}: Element Call
        restarts its "left the call" event this way while the client lives."""
        params = validate(raw, DelayedEventParams)
        if params.action == "cancel":
            await self._delayed.cancel(requester, params.delay_id)
        elif params.action == "restart":
            await self._delayed.restart(requester, params.delay_id)
        else:
            await self._delayed.send_now(requester, params.delay_id)
        return {}

    async def _send(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As PUT /rooms/{roomId}/send/{eventType}/{txnId}: same limit, same idempotency."""
        params = validate(raw, SendParams)
        if params.delay is not None:
            # As PUT /send with ?org.matrix.msc4140.delay= (the txn_id is not used there).
            delay_id = await self._delayed.schedule(
                requester,
                RoomID.parse(params.room_id),
                params.event_type,
                None,
                params.content,
                params.delay,
            )
            return {"delay_id": delay_id}
        event_id = await self._sending.send_event(
            requester,
            RoomID.parse(params.room_id),
            params.event_type,
            params.txn_id,
            params.content,
        )
        return {"event_id": event_id}

    async def _set_typing(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As PUT /rooms/{roomId}/typing/{userId}, for the connection's own user."""
        params = validate(raw, TypingParams)
        await self._typing.set_typing(
            requester,
            RoomID.parse(params.room_id),
            requester.user_id,
            params.typing,
            params.timeout,
        )
        return {}

    async def _post_receipt(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As POST /rooms/{roomId}/receipt/{receiptType}/{eventId}."""
        params = validate(raw, ReceiptParams)
        if params.thread_id == "":
            raise MatrixError(Codes.INVALID_PARAM, "thread_id must be a non-empty string")
        await self._receipts.post_receipt(
            requester,
            RoomID.parse(params.room_id),
            params.receipt_type,
            EventID.parse(params.event_id),
            params.thread_id,
        )
        return {}

    async def _set_presence(self, requester: Requester, raw: JsonDict) -> JsonDict:
        """As PUT /presence/{userId}/status, for the connection's own user."""
        params = validate(raw, PresenceParams)
        await self._presence.set_presence(
            requester,
            requester.user_id,
            params.presence,
            params.status_msg,
            status_msg_given="status_msg" in params.model_fields_set,
        )
        return {}
