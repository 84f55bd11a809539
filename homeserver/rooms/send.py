"""One path for "a user sends an event": every transport that lets a client send (HTTP
``PUT /send`` and ``/redact``, the WebSocket transport) calls this service, so the rate limit,
transaction-ID idempotency and presence activity happen once, in one place.

Idempotency: a retry is not looked for up front (a read on every send for the odd retry). Its
event is built again and the store refuses it on the transaction ID (``DuplicateTxn``); the
event that holds the ID is then the answer. So it is too when the retry would be refused now
(its sender has left since; a reaction, a duplicate of itself): any refusal of a send whose
transaction ID is already taken answers with the event that took it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID, UserID
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.core.types import JsonDict, Requester
from homeserver.events.auth import client_can_redact
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.rooms.aggregations import Aggregations
from homeserver.rooms.sender import EventSender, Txn
from homeserver.rooms.service import MEMBERSHIP, RoomService
from homeserver.storage.events import DuplicateTxn, EventStore

REDACTION = "m.room.redaction"


class Activity(Protocol):
    """Presence: sending is activity (the user is online and active again)."""

    async def bump_active(self, user_id: UserID) -> None: ...


def shadow_event_id(requester: Requester, scope: str, txn_id: str) -> EventID:
    """The event ID a shadow-banned user is answered with: nothing is sent, and a retry of
    the same transaction gets the same ID, as a real send's would."""
    digest = hashlib.sha256(
        f"{requester.user_id}\0{requester.device_id}\0{scope}\0{txn_id}".encode()
    ).digest()
    return EventID("$" + base64.urlsafe_b64encode(digest).decode().rstrip("="))


class SendService:
    def __init__(
        self,
        sender: EventSender,
        events: EventStore,
        rooms: RoomService,
        aggregations: Aggregations,
        ratelimiter: RateLimiter,
        activity: Activity,
    ) -> None:
        self._sender = sender
        self._events = events
        self._rooms = rooms
        self._aggregations = aggregations
        self._ratelimiter = ratelimiter
        self._activity = activity

    async def send_event(
        self,
        requester: Requester,
        room_id: RoomID,
        event_type: str,
        txn_id: str,
        content: JsonDict,
    ) -> EventID:
        """PUT /rooms/{roomId}/send/{eventType}/{txnId}: idempotent per device and
        transaction ID; rate-limited; the sender is active."""
        if event_type != "m.room.redaction":
            requester.check_not_suspended()
        await self._ratelimiter.check(
            Action.MESSAGE, requester.user_id, exempt=not requester.rate_limited
        )
        if requester.shadow_banned:
            return shadow_event_id(requester, f"send:{room_id}:{event_type}", txn_id)
        event_id = await self.send_scheduled(requester, room_id, event_type, txn_id, content)
        await self._activity.bump_active(requester.user_id)
        return event_id

    async def send_scheduled(
        self,
        requester: Requester,
        room_id: RoomID,
        event_type: str,
        txn_id: str,
        content: JsonDict,
    ) -> EventID:
        """An event its sender scheduled earlier (a delayed event, ``rooms/delayed.py``):
        the checks and idempotency of ``send_event``, without the rate limit (counted when
        it was scheduled) and without activity (the sender did nothing now)."""

        async def send(txn: Txn) -> str:
            redacts: str | None = None
            async with self._events.pinned_reads():
                check_json_numbers(content, "content")
                if event_type == MEMBERSHIP:
                    raise MatrixError(
                        Codes.FORBIDDEN, "Use the membership endpoints for m.room.member"
                    )
                await self._rooms.require_joined(requester.user_id, room_id)
                if event_type == REDACTION:
                    # A redaction sent as an event names its target in `content` (v11 and
                    # later, and what newer clients send in any version); it is checked as
                    # /redact checks, and built in the room version's format.
                    redacts = content.get("redacts")
                    if not isinstance(redacts, str):
                        raise MatrixError(
                            Codes.BAD_JSON, "An m.room.redaction needs 'redacts' in its content"
                        )
                    await self._check_redaction(requester, room_id, EventID.parse(redacts))
                await self._aggregations.check_new_relation(
                    requester.user_id, room_id, event_type, content
                )
            sent = await self._sender.send(
                room_id, requester.user_id, event_type, content, txn=txn, redacts=redacts
            )
            return sent.event_id

        return await self._once(requester, f"send:{room_id}:{event_type}", txn_id, send)

    async def redact(
        self,
        requester: Requester,
        room_id: RoomID,
        event_id: EventID,
        txn_id: str,
        reason: str | None,
    ) -> EventID:
        """PUT /rooms/{roomId}/redact/{eventId}/{txnId}: idempotent as /send is."""
        if requester.shadow_banned:
            return shadow_event_id(requester, f"redact:{room_id}", txn_id)

        async def send(txn: Txn) -> str:
            await self._rooms.require_joined(requester.user_id, room_id)
            await self._check_redaction(requester, room_id, event_id)
            content: JsonDict = {"reason": reason} if reason is not None else {}
            sent = await self._sender.send(
                room_id,
                requester.user_id,
                REDACTION,
                content,
                txn=txn,
                redacts=event_id,
            )
            return sent.event_id

        return await self._once(requester, f"redact:{room_id}", txn_id, send)

    async def _check_redaction(
        self, requester: Requester, room_id: RoomID, event_id: EventID
    ) -> None:
        """The spec's "Handling redactions": the redact level, or the target's sender on the
        redacting user's own server (the auth rules leave this to servers from room version 3;
        the auth rules of v1 and v2 check it again)."""
        target = await self._events.get_event(event_id)
        if target is None or target.room_id != room_id:
            raise MatrixError(Codes.NOT_FOUND, "Event not found")
        if target.sender != requester.user_id:
            requester.check_not_suspended()  # spec: their own events they may redact
        version = KNOWN_ROOM_VERSIONS[await self._rooms.room_version(room_id)]
        pl = await self._events.get_current_state_event(room_id, "m.room.power_levels", "")
        create = await self._events.get_current_state_event(room_id, "m.room.create", "")
        if not client_can_redact(
            version,
            requester.user_id,
            target.sender,
            pl.content if pl else None,
            create.pdu if create else None,
        ):
            raise MatrixError(Codes.FORBIDDEN, "You may not redact this event")

    async def _once(
        self,
        requester: Requester,
        scope: str,
        txn_id: str,
        send: Callable[[Txn], Awaitable[str]],
    ) -> EventID:
        """The one place a transaction ID is honoured: ``send`` under it, or, if it fails
        because (or while) the ID is taken, the event that took it."""
        try:
            return EventID(await send(Txn(requester.device_id, txn_id, scope)))
        except (MatrixError, DuplicateTxn):
            known = await self._events.get_txn_event_id(
                requester.user_id, requester.device_id, scope, txn_id
            )
            if known is None:
                raise
            return EventID(known)
