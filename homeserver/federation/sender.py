"""The outbound federation sender: our events and EDUs to the servers that need them.

1. *Enqueue*: a consumer of the events stream with its own cursor in the database
   (``federation_sender_positions``). Each new event sent by one of our users is queued for
   every other server with a member joined to the room, and for the server of the member
   an ``m.room.member`` event is about (an invite, a kick). The queue rows and the cursor
   commit together, so a restart neither loses nor repeats an event.
2. *Send*: per destination, one transaction in flight, of at most 50 PDUs and 100 EDUs
   (EDUs come from ``FederationOutbox``), each under a new transaction ID. A destination
   that fails is backed off (5 s, doubling to a day, with jitter) and not tried before its
   retry time; when it answers again its queue is first caught up: only the newest event
   of each room is sent, and the destination fetches the rest (``/get_missing_events``),
   as Synapse's catch-up does. A final 4xx answer drops the transaction with a log line.
   Each destination is sent by its own task: a dead one never holds the others up.

The sender runs once per process (a background job of ``homeserver/app.py``). With several
workers exactly one may run it: that is issue 21's singleton; nothing here assumes more
than that ``run`` is called in one place.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from homeserver.core.clock import Clock
from homeserver.core.ids import UserID
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.federation.client import FederationError
from homeserver.federation.outbox import DEVICE_LIST_UPDATE, SIGNING_KEY_UPDATE, TYPING
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.federation_queue import (
    FederationQueueStore,
    OutboundPdu,
    QueuedEdu,
)
from homeserver.wakeups.bus import Bus, Wakeup

logger = logging.getLogger(__name__)

CURSOR = "events"
MAX_PDUS = 50  # spec, PUT /send/{txnId}
MAX_EDUS = 100
BACKOFF_INITIAL_MS = 5_000
BACKOFF_MAX_MS = 24 * 3600 * 1000
SCAN_BATCH = 500  # events read from the stream per round trip
DUE_BATCH = 100  # destinations looked up per round
POLL_S = 5.0  # a lost wake-up (another worker's EDU) costs at most this
# A typing notification older than this is not sent: the user stopped long ago (a client
# renews typing well within it), and the destination would show them typing again.
TYPING_STALE_MS = 60_000
# 4xx answers that a retry may fix: a timeout, a rate limit.
RETRYABLE_4XX = frozenset((408, 429))


class Transport(Protocol):
    """Signed requests to other servers (``FederationClient``)."""

    async def request(
        self, destination: str, method: str, path: str, *, content: Any | None = None
    ) -> Any: ...


class DeviceKeys(Protocol):
    """Our users' devices as other servers see them (``FederationKeyService``)."""

    async def user_devices(self, user_id: UserID) -> JsonDict: ...


def backoff_ms(previous_ms: int) -> int:
    """The next back-off after one of ``previous_ms`` (0: the first failure), with jitter
    so that destinations that failed together are not retried together."""
    base = BACKOFF_INITIAL_MS if previous_ms <= 0 else min(BACKOFF_MAX_MS, previous_ms * 2)
    return int(base * random.uniform(0.9, 1.1))  # noqa: S311 - jitter, not a secret


class FederationSender:
    def __init__(
        self,
        db: Database,
        store: FederationQueueStore,
        events: EventStore,
        transport: Transport,
        device_keys: DeviceKeys,
        clock: Clock,
        bus: Bus,
        server_name: str,
        allows: Callable[[str], bool],
        wake: asyncio.Event,
    ) -> None:
        self._db = db
        self._store = store
        self._events = events
        self._transport = transport
        self._device_keys = device_keys
        self._clock = clock
        self._server_name = server_name
        self._allows = allows
        # Set by the events stream's wake-ups and by the outbox when it queues an EDU.
        self._wake = wake
        self._round = asyncio.Lock()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        bus.subscribe(self._on_wakeup)

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        if wakeup.stream == Stream.EVENTS:
            self._wake.set()

    # --- the job ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The background job: queue and send, then sleep until woken, the next retry time
        or the poll interval."""
        try:
            while True:
                self._wake.clear()
                await self.run_once()
                try:
                    async with asyncio.timeout(await self._sleep_s()):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            tasks = list(self._in_flight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sleep_s(self) -> float:
        now = self._clock.now_ms()
        retry = await self._store.next_retry_ts(now)
        if retry is None:
            return POLL_S
        return max(0.05, min(POLL_S, (retry - now) / 1000))

    async def run_once(self) -> None:
        async with self._round:
            await self.enqueue_new()
            await self.send_due()

    # --- enqueue -----------------------------------------------------------------------------

    async def enqueue_new(self) -> None:
        upto = (await self._db.current_positions()).get(Stream.EVENTS, 0)
        cursor = await self._store.get_position(CURSOR)
        if cursor is None:
            # First start: what was sent before federation had a sender is not sent now.
            await self._store.queue_pdus(CURSOR, [], None, upto)
            return
        while cursor < upto:
            found = await self._store.get_new_events(cursor, upto, SCAN_BATCH)
            reach = found[-1].stream_ordering if len(found) == SCAN_BATCH else upto
            local = [e for e in found if UserID(e.sender).server_name == self._server_name]
            joined = await self._store.get_remote_members(
                {e.room_id for e in local}, self._server_name
            )
            rows: list[OutboundPdu] = []
            for event in local:
                servers = {UserID(u).server_name for u in joined.get(event.room_id, ())}
                if event.type == "m.room.member" and event.state_key:
                    servers.add(UserID(event.state_key).server_name)
                servers.discard(self._server_name)
                rows.extend(
                    OutboundPdu(s, event.stream_ordering, event.room_id, event.event_id)
                    for s in sorted(servers)
                    if self._allows(s)
                )
            if not await self._store.queue_pdus(CURSOR, rows, cursor, reach):
                # Another sender moved the cursor (two running by mistake): follow it.
                cursor = await self._store.get_position(CURSOR) or upto
                continue
            cursor = reach

    # --- send --------------------------------------------------------------------------------

    async def send_due(self) -> None:
        """Start a task for each destination that is due and has none running."""
        due = await self._store.due_destinations(self._clock.now_ms(), DUE_BATCH)
        for destination in due:
            if destination in self._in_flight:
                continue
            task = asyncio.create_task(self._send_queue(destination))
            self._in_flight[destination] = task
            task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        for destination, running in list(self._in_flight.items()):
            if running is task:
                del self._in_flight[destination]

    async def _send_queue(self, destination: str) -> None:
        """Transactions to ``destination`` until its queue is empty or it fails."""
        try:
            while await self._send_one(destination):
                pass
        except Exception:
            # A failure of ours (the database, a queued EDU we cannot render): backed off
            # like a failure of the destination, rather than retried at every wake-up.
            logger.exception("federation sender failed", extra={"destination": destination})
            state = await self._store.get_destination(destination)
            interval = backoff_ms(state.retry_interval_ms if state is not None else 0)
            await self._store.backed_off(destination, interval, self._clock.now_ms() + interval)

    async def _send_one(self, destination: str) -> bool:
        """One transaction; True if there may be more to send now."""
        state = await self._store.get_destination(destination)
        now = self._clock.now_ms()
        if state is None or state.retry_at_ts > now:
            return False
        if not self._allows(destination):
            pdus, edus = await self._store.get_batch(destination, MAX_PDUS, MAX_EDUS)
            await self._store.remove_sent(
                destination,
                [p.stream_ordering for p in pdus],
                [e.id for e in edus],
                succeeded=False,
            )
            return bool(pdus or edus)
        if state.catching_up:
            dropped = await self._store.catch_up(destination)
            if dropped:
                logger.info(
                    "destination caught up: newest event per room only",
                    extra={"destination": destination, "dropped": dropped},
                )
        pdus, edus = await self._store.get_batch(destination, MAX_PDUS, MAX_EDUS)
        if not pdus and not edus:
            return False
        loaded = await self._events.get_events([p.event_id for p in pdus])
        pdu_json = [loaded[p.event_id].pdu for p in pdus if p.event_id in loaded]
        edu_json = await self._render_edus(edus)
        txn_id = f"{now}.{await self._store.take_txn_id(destination)}"
        body = {
            "origin": self._server_name,
            "origin_server_ts": now,
            "pdus": pdu_json,
            "edus": edu_json,
        }
        orderings = [p.stream_ordering for p in pdus]
        edu_ids = [e.id for e in edus]
        try:
            answer = await self._transport.request(
                destination,
                "PUT",
                f"/_matrix/federation/v1/send/{quote(txn_id, safe='')}",
                content=body,
            )
        except FederationError as e:
            if e.status is not None and 400 <= e.status < 500 and e.status not in RETRYABLE_4XX:
                logger.warning(
                    "transaction refused: dropped",
                    extra={"destination": destination, "status": e.status, "errcode": e.errcode},
                )
                await self._store.remove_sent(destination, orderings, edu_ids, succeeded=True)
                return True
            interval = backoff_ms(state.retry_interval_ms)
            logger.info(
                "destination unreachable: backing off",
                extra={"destination": destination, "retry_in_ms": interval, "why": str(e)},
            )
            await self._store.backed_off(destination, interval, self._clock.now_ms() + interval)
            return False
        self._log_refusals(destination, answer)
        await self._store.remove_sent(destination, orderings, edu_ids, succeeded=True)
        return True

    async def _render_edus(self, edus: list[QueuedEdu]) -> list[JsonDict]:
        """The EDUs as sent; device list and signing key updates get the keys as they are
        now."""
        devices: dict[str, JsonDict] = {}
        out: list[JsonDict] = []
        now = self._clock.now_ms()
        for edu in edus:
            if edu.edu_type == TYPING and edu.queued_ts < now - TYPING_STALE_MS:
                continue
            content: JsonDict = orjson.loads(edu.content_json)
            if edu.edu_type in (DEVICE_LIST_UPDATE, SIGNING_KEY_UPDATE):
                user_id = UserID(content["user_id"])
                if user_id not in devices:
                    devices[user_id] = await self._device_keys.user_devices(user_id)
                listed = devices[user_id]
                if edu.edu_type == SIGNING_KEY_UPDATE:
                    keys = {
                        f"{t}_key": listed[f"{t}_key"]
                        for t in ("master", "self_signing")
                        if f"{t}_key" in listed
                    }
                    if not keys:
                        continue
                    content.update(keys)
                elif not content.get("deleted"):
                    device = next(
                        (d for d in listed["devices"] if d["device_id"] == content["device_id"]),
                        None,
                    )
                    if device is None:
                        # Gone since, or without keys: what /user/devices says of it too.
                        content["deleted"] = True
                    else:
                        content["keys"] = device["keys"]
            out.append({"edu_type": edu.edu_type, "content": content})
        return out

    @staticmethod
    def _log_refusals(destination: str, answer: Any) -> None:
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(pdus, dict):
            return
        refused = [e for e, r in pdus.items() if isinstance(r, dict) and "error" in r]
        if refused:
            logger.info(
                "destination refused pdus",
                extra={"destination": destination, "count": len(refused)},
            )
