"""Delayed events (MSC4140): an event (a message or a state event) sent later, unless its
sender cancels it first, or sooner if they say so; restarting it waits its delay again.
Element Call schedules its "left the call" state this way and keeps restarting it while the
client lives."""

from __future__ import annotations

import asyncio
import logging
import secrets

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.ratelimit import Action, RateLimiter
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.send import SendService
from homeserver.rooms.service import RoomService
from homeserver.storage.delayed_events import DelayedEvent, DelayedEventStore

logger = logging.getLogger(__name__)

# A delay is a promise the server keeps across restarts: bounded, as each user's number of
# pending events is.
MAX_DELAY_MS = 24 * 3600 * 1000
MAX_PER_USER = 100
# How often a worker looks for due events when none is due sooner (another worker may have
# scheduled one): the lateness of a delayed event is at most this.
POLL_INTERVAL_S = 1.0
DUE_BATCH = 100


class DelayedEventService:
    """Scheduled beside the one send path and delivered through it (``SendService``)."""

    def __init__(
        self,
        store: DelayedEventStore,
        sending: SendService,
        rooms: RoomService,
        ratelimiter: RateLimiter,
        clock: Clock,
    ) -> None:
        self._store = store
        self._sending = sending
        self._rooms = rooms
        self._ratelimiter = ratelimiter
        self._clock = clock
        self._scheduled = asyncio.Event()

    async def schedule(
        self,
        requester: Requester,
        room_id: RoomID,
        event_type: str,
        state_key: str | None,
        content: JsonDict,
        delay_ms: int,
    ) -> str:
        """Returns the delay ID. The event is checked like any other when it is sent; a
        message counts against the sender's rate limit now, as ``PUT /send`` does."""
        if state_key is None:
            await self._ratelimiter.check(
                Action.MESSAGE, requester.user_id, exempt=not requester.rate_limited
            )
        if delay_ms < 0:
            raise MatrixError(Codes.INVALID_PARAM, "The delay must not be negative")
        if delay_ms > MAX_DELAY_MS:
            raise MatrixError(
                Codes.MAX_DELAY_EXCEEDED,
                f"The delay exceeds the allowed maximum of {MAX_DELAY_MS} ms",
                max_delay=MAX_DELAY_MS,
            )
        check_json_numbers(content, "content")
        await self._rooms.require_joined(requester.user_id, room_id)
        delay_id = "d" + secrets.token_urlsafe(16)
        now = self._clock.now_ms()
        event = DelayedEvent(
            delay_id,
            requester.user_id,
            requester.device_id,
            room_id,
            event_type,
            state_key,
            content,
            delay_ms,
            now + delay_ms,
        )
        if not await self._store.add(event, MAX_PER_USER):
            raise MatrixError(
                Codes.LIMIT_EXCEEDED, f"At most {MAX_PER_USER} delayed events per user"
            )
        self._scheduled.set()
        return delay_id

    async def list_for_user(self, requester: Requester) -> list[JsonDict]:
        await self._store.cancel_overwritten(user_id=requester.user_id)
        now = self._clock.now_ms()
        out = []
        for e in await self._store.list_for_user(requester.user_id):
            item: JsonDict = {
                "delay_id": e.delay_id,
                "room_id": e.room_id,
                "type": e.event_type,
                "delay": e.delay,
                "running_since": e.send_at - e.delay,
                "content": e.content,
            }
            if e.state_key is not None:
                item["state_key"] = e.state_key
            item["remaining"] = max(0, e.send_at - now)
            out.append(item)
        return out

    async def cancel(self, requester: Requester, delay_id: str) -> None:
        await self._own(requester, delay_id)
        if not await self._store.delete(delay_id):
            raise _not_found()

    async def restart(self, requester: Requester, delay_id: str) -> None:
        await self._own(requester, delay_id)
        if not await self._store.restart(delay_id, self._clock.now_ms()):
            raise _not_found()

    async def send_now(self, requester: Requester, delay_id: str) -> None:
        await self._deliver(await self._own(requester, delay_id), raise_errors=True)

    async def send_due(self) -> int:
        """Send every event due now; returns how many were handled."""
        handled = 0
        while True:
            due = await self._store.due(self._clock.now_ms(), DUE_BATCH)
            for event in due:
                await self._deliver(event, raise_errors=False)
            handled += len(due)
            if len(due) < DUE_BATCH:
                return handled

    async def run(self) -> None:
        """Background job: sends events as they fall due, these of before a restart too."""
        while True:
            self._scheduled.clear()  # before reading: a schedule() from now on wakes us
            next_at = await self._store.next_send_at()  # one statement a round when idle
            if next_at is not None and next_at <= self._clock.now_ms():
                await self.send_due()
                continue
            wait = POLL_INTERVAL_S
            if next_at is not None:
                wait = min(wait, max(0.0, (next_at - self._clock.now_ms()) / 1000))
            try:
                async with asyncio.timeout(wait):
                    await self._scheduled.wait()
            except TimeoutError:
                pass

    async def _own(self, requester: Requester, delay_id: str) -> DelayedEvent:
        await self._store.cancel_overwritten(delay_id=delay_id)
        event = await self._store.get(delay_id)
        if event is None or event.user_id != requester.user_id:
            raise _not_found()  # another user's is as unknown as a missing one
        return event

    async def _deliver(self, event: DelayedEvent, *, raise_errors: bool) -> None:
        """Send it as its sender's device would have; the delay ID is the transaction ID,
        so a second worker sending the same event gets the same one. An event refused now
        (the sender left, lost the power) is dropped."""
        sender = Requester(UserID(event.user_id), event.device_id, 0)
        room_id = RoomID(event.room_id)  # parsed when it was scheduled
        if event.state_key is not None and await self._store.cancel_overwritten(
            delay_id=event.delay_id
        ):
            # MSC4140: another user set that state since it was scheduled; theirs stands.
            return
        try:
            if event.state_key is None:
                await self._sending.send_scheduled(
                    sender, room_id, event.event_type, event.delay_id, event.content
                )
            else:
                await self._rooms.set_state(
                    sender, room_id, event.event_type, event.state_key, event.content
                )
        except MatrixError as e:
            logger.info(
                "delayed event refused",
                extra={"room_id": event.room_id, "errcode": str(e.code)},
            )
            await self._store.delete(event.delay_id)
            if raise_errors:
                raise
            return
        await self._store.delete(event.delay_id)


def _not_found() -> MatrixError:
    return MatrixError(Codes.NOT_FOUND, "No such delayed event")
