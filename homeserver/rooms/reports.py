"""Reporting content (spec: "Reporting content"): rooms (v1.13), events, users (v1.14)."""

from __future__ import annotations

import logging

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID, UserID
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.core.types import Requester
from homeserver.storage.accounts import AccountStore
from homeserver.storage.events import EventStore
from homeserver.storage.reports import ReportStore
from homeserver.storage.rooms import RoomStore

logger = logging.getLogger(__name__)

# A reason is free text for a human reader; past this it is not a reason but a payload.
MAX_REASON_BYTES = 4096


class ReportService:
    def __init__(
        self,
        store: ReportStore,
        rooms: RoomStore,
        events: EventStore,
        accounts: AccountStore,
        ratelimiter: RateLimiter,
        clock: Clock,
        server_name: str,
    ) -> None:
        self._store = store
        self._rooms = rooms
        self._events = events
        self._accounts = accounts
        self._ratelimiter = ratelimiter
        self._clock = clock
        self._server_name = server_name

    async def report_room(self, requester: Requester, room_id: RoomID, reason: str | None) -> None:
        """Anyone may report a room the server knows (no membership needed)."""
        await self._check(requester, reason)
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "The room was not found")
        await self._add(requester, reason, room_id=room_id)

    async def report_event(
        self, requester: Requester, room_id: RoomID, event_id: EventID, reason: str | None
    ) -> None:
        """Only a member of the room may report its events."""
        await self._check(requester, reason)
        membership = await self._rooms.get_membership(room_id, requester.user_id)
        event = await self._events.get_event(event_id)
        if (
            membership is None
            or membership.membership != "join"
            or event is None
            or event.room_id != room_id
        ):
            raise MatrixError(
                Codes.NOT_FOUND, "The event was not found or you are not joined to the room"
            )
        await self._add(requester, reason, room_id=room_id, event_id=event_id)

    async def report_user(self, requester: Requester, user_id: UserID, reason: str | None) -> None:
        await self._check(requester, reason)
        local = user_id.endswith(f":{self._server_name}")
        if local and await self._accounts.get_user(user_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "The user was not found")
        await self._add(requester, reason, user_id=user_id)

    async def _check(self, requester: Requester, reason: str | None) -> None:
        if reason is not None and len(reason.encode()) > MAX_REASON_BYTES:
            raise MatrixError(
                Codes.INVALID_PARAM, f"The reason is longer than {MAX_REASON_BYTES} bytes"
            )
        # Each report is a row for a human to read: as limited as sending an event.
        await self._ratelimiter.check(Action.MESSAGE, requester.user_id, exempt=requester.is_admin)

    async def _add(
        self,
        requester: Requester,
        reason: str | None,
        *,
        room_id: str | None = None,
        event_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        await self._store.add_report(
            requester.user_id,
            self._clock.now_ms(),
            room_id=room_id,
            event_id=event_id,
            user_id=user_id,
            reason=reason,
        )
        logger.info(
            "content reported",
            extra={"room_id": room_id, "event_id": event_id, "reported_user": user_id},
        )
