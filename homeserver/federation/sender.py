"""The outbound federation sender: our events and EDUs to the servers that need them.

1. *Enqueue*: a consumer of the events stream with its own cursor in the database
   (``federation_sender_positions``). Each new event sent by one of our users is queued for
   every other server with a member joined to the room, and for the server of the member
   an ``m.room.member`` event is about (an invite, a kick). The queue rows and the cursor
   commit together, so a restart neither loses nor repeats an event; a round that queues
   nothing moves the cursor in memory (saved every few seconds or past a membership event),
   so a room of our users only costs two indexed reads per round. Rounds are gathered (at
   most one per ``GATHER_S``), and a server gets an event only if one of its users was
   joined at it: a membership older than the event says so, a newer one (read in the same
   batch) is checked against the state at the event.
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
import math
import random
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

import orjson
from cachetools import LRUCache

from homeserver.core.clock import Clock
from homeserver.core.ids import UserID
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.federation.client import FederationError
from homeserver.federation.outbox import (
    DEVICE_LIST_UPDATE,
    RESYNC,
    SIGNING_KEY_UPDATE,
    TYPING,
)
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.federation_queue import (
    FederationQueueStore,
    NewEvent,
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
# Rounds start at most this often: the wake-ups of a busy server (one per send) that come
# within it share the next round, which then reads all their events at once. The first
# wake-up after a quiet spell starts a round at once.
GATHER_S = 0.05
# A round that queues nothing moves the cursor in memory only; the database copy follows at
# least this often (and at once with anything queued, or past a membership change), so a
# restart reads again at most this much of the stream, finding nothing new to queue.
CURSOR_SAVE_S = 5.0
# Rooms whose joined members from other servers are known (none: only ours): each is read
# once, then forgotten when a membership event, or any event from another server, is seen in
# it, since either may change who is joined.
REMOTE_ROOMS_CACHED = 50_000
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
        # Set by the outbox when it queues an EDU, by the admin API, and when a destination's
        # task ends: a look at the destinations.
        self._wake = wake
        self._round = asyncio.Lock()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        # Set by the events stream's wake-ups (which need no look at the destinations).
        self._events_wake = asyncio.Event()
        self._events_moved = True
        self._woken_upto = 0  # the newest events position a wake-up told of
        self._poll = True  # the next round reads the events position (a wake-up may be lost)
        # The events cursor as far as read (None: not read yet) and as saved in the database.
        self._cursor: int | None = None
        self._saved: int | None = None
        self._saved_at = -math.inf
        self._retry_ts: int | None = None  # the earliest retry time, as last read
        # Room ID -> each server (other than ours) with a member joined -> those members ->
        # the stream position of their membership event.
        self._remote_rooms: LRUCache[str, dict[str, dict[str, int]]] = LRUCache(REMOTE_ROOMS_CACHED)
        bus.subscribe(self._on_wakeup)

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        if wakeup.stream == Stream.EVENTS:
            # Announced after its commit, and positions commit in order: all below are in.
            self._woken_upto = max(self._woken_upto, wakeup.position)
            self._events_moved = True
            self._events_wake.set()

    # --- the job ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The background job: queue and send, then sleep until woken, the next retry time
        or the poll interval. An events wake-up only reads the stream (a room without
        members elsewhere queues nothing); the destinations are looked at when something
        was queued, an EDU or the admin API woke the sender, a transaction ended, or the
        timer ran out."""
        loop = asyncio.get_running_loop()
        last_round = -math.inf
        self._wake.set()  # the first round looks at the queue left by the last run
        try:
            while True:
                pause = last_round + GATHER_S - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                last_round = loop.time()
                due = self._wake.is_set()
                self._wake.clear()
                events = self._events_moved
                self._events_moved = False
                self._events_wake.clear()
                upto = None if self._poll else self._woken_upto
                self._poll = False
                if await self.run_once(events=events, due=due, upto=upto):
                    self._retry_ts = await self._store.next_retry_ts(self._clock.now_ms())
                if not await self._woken(self._sleep_s()):
                    self._events_moved = self._poll = True  # events from another worker
                    self._wake.set()
        finally:
            tasks = list(self._in_flight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _woken(self, timeout_s: float) -> bool:
        """Waits for either wake-up; False if ``timeout_s`` passed first."""
        if self._wake.is_set() or self._events_wake.is_set():
            return True
        waiters = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._events_wake.wait()),
        ]
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        return bool(done)

    def _sleep_s(self) -> float:
        """Until the poll, or the earliest retry time of a destination that waits (as last
        read: only a round that looked at the destinations reads it again)."""
        if self._retry_ts is None:
            return POLL_S
        return max(0.05, min(POLL_S, (self._retry_ts - self._clock.now_ms()) / 1000))

    async def run_once(
        self, *, events: bool = True, due: bool = True, upto: int | None = None
    ) -> bool:
        """One round: new events up to ``upto`` (None: the current position) queued
        (``events``), then the destinations that are due started (``due``, or when events
        were queued); whether those were looked at."""
        async with self._round:
            if events and await self.enqueue_new(upto):
                due = True
            if due:
                await self.send_due()
            return due

    # --- enqueue -----------------------------------------------------------------------------

    async def enqueue_new(self, upto: int | None = None) -> bool:
        """Queues the new events of our users (up to ``upto``, committed; None: the current
        position) for the servers in their rooms; whether any PDU was queued."""
        if upto is None:
            upto = (await self._db.current_positions()).get(Stream.EVENTS, 0)
        if self._cursor is None:
            self._cursor = self._saved = await self._store.get_position(CURSOR)
            self._saved_at = asyncio.get_running_loop().time()
        cursor = self._cursor
        if cursor is None:
            # First start: what was sent before federation had a sender is not sent now.
            await self._store.queue_pdus(CURSOR, [], None, upto)
            self._cursor = None  # read back: another sender may have made the row first
            return False
        queued = False
        while cursor < upto:
            found = await self._store.get_new_events(cursor, upto, SCAN_BATCH)
            reach = found[-1].stream_ordering if len(found) == SCAN_BATCH else upto
            rows, memberships = await self._outbound(found)
            now = asyncio.get_running_loop().time()
            if rows or memberships or now - self._saved_at >= CURSOR_SAVE_S:
                if not await self._store.queue_pdus(CURSOR, rows, self._saved, reach):
                    # Another sender moved the cursor (two running by mistake): follow it.
                    cursor = await self._store.get_position(CURSOR) or upto
                    self._cursor = self._saved = cursor
                    continue
                self._saved, self._saved_at = reach, now
                queued = queued or bool(rows)
            cursor = self._cursor = reach
        return queued

    async def _outbound(self, found: list[NewEvent]) -> tuple[list[OutboundPdu], bool]:
        """The PDUs to queue for these events, and whether one is a membership event."""
        memberships = False
        local: list[NewEvent] = []
        for e in found:
            if e.type == "m.room.member":
                memberships = True
                self._remote_rooms.pop(e.room_id, None)
            if UserID(e.sender).server_name == self._server_name:
                local.append(e)
            else:
                # Another server's event may change the room's state (a state reset).
                self._remote_rooms.pop(e.room_id, None)
        unknown = {e.room_id for e in local if e.room_id not in self._remote_rooms}
        if unknown:
            joined = await self._store.get_remote_members(unknown, self._server_name)
            for room_id in unknown:
                by_server: dict[str, dict[str, int]] = {}
                for user_id, position in joined.get(room_id, {}).items():
                    by_server.setdefault(UserID(user_id).server_name, {})[user_id] = position
                self._remote_rooms[room_id] = by_server
        rows: list[OutboundPdu] = []
        for event in local:
            servers = set()
            for server, members in self._remote_rooms.get(event.room_id, {}).items():
                if min(members.values()) < event.stream_ordering or await self._joined_at(
                    event, members
                ):
                    servers.add(server)
            if event.type == "m.room.member" and event.state_key:
                target = UserID(event.state_key).server_name
                if (
                    target != self._server_name
                    and target not in servers
                    and await self._is_leave(event)
                ):
                    # A kick or a rescinded invite: the target's server learns of it even
                    # when none of its users is joined. An invite goes through /invite only:
                    # a server with invited users alone is not in the room.
                    servers.add(target)
            servers.discard(self._server_name)
            rows.extend(
                OutboundPdu(s, event.stream_ordering, event.room_id, event.event_id)
                for s in sorted(servers)
                if self._allows(s)
            )
        return rows, memberships

    async def _is_leave(self, event: NewEvent) -> bool:
        found = (await self._events.get_events([event.event_id])).get(event.event_id)
        return found is not None and found.content.get("membership") == "leave"

    async def _joined_at(self, event: NewEvent, members: dict[str, int]) -> bool:
        """Whether one of ``members`` (a server's, all with a membership event since
        ``event``: read in the same batch) was joined at ``event``, by the state at it. A
        join after the event does not make its server one to send it to; a display name
        change after it does not make the server one not to."""
        if event.state_group <= 0:
            return False
        state = await self._events.get_state_ids(event.state_group)
        ids = [e for u in members if (e := state.get(("m.room.member", u))) is not None]
        if not ids:
            return False
        found = await self._events.get_events(ids)
        return any(e.content.get("membership") == "join" for e in found.values())

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
        # Another look at the destinations: PDUs queued while its last batch was read, or a
        # back-off whose retry time the job must now wait for.
        self._wake.set()

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
        edu_json, device_lists = await self._render_edus(destination, edus)
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
                # Recorded as sent: the next update's prev_id names one the destination
                # lacks, so it fetches the whole list.
                await self._store.remove_sent(
                    destination, orderings, edu_ids, succeeded=True, device_lists=device_lists
                )
                return True
            interval = backoff_ms(state.retry_interval_ms)
            logger.info(
                "destination unreachable: backing off",
                extra={"destination": destination, "retry_in_ms": interval, "why": str(e)},
            )
            await self._store.backed_off(destination, interval, self._clock.now_ms() + interval)
            return False
        self._log_refusals(destination, answer)
        await self._store.remove_sent(
            destination, orderings, edu_ids, succeeded=True, device_lists=device_lists
        )
        return True

    async def _render_edus(
        self, destination: str, edus: list[QueuedEdu]
    ) -> tuple[list[JsonDict], dict[str, int]]:
        """The EDUs as sent, and the stream ID of the last device list update about each
        user among them. Device list and signing key updates get the keys as they are now;
        a device list update's prev_id is the update about its user sent before it (the
        last one the destination was sent, for the first), or itself for a resync marker:
        an ID the destination cannot have applied, so it fetches the whole list."""
        devices: dict[str, JsonDict] = {}
        out: list[JsonDict] = []
        now = self._clock.now_ms()
        contents: list[tuple[QueuedEdu, JsonDict]] = []
        for edu in edus:
            if edu.edu_type == TYPING and edu.queued_ts < now - TYPING_STALE_MS:
                continue
            contents.append((edu, orjson.loads(edu.content_json)))
        about = {c["user_id"] for e, c in contents if e.edu_type == DEVICE_LIST_UPDATE}
        last = await self._store.get_device_lists_sent(destination, about)
        for edu, content in contents:
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
                else:
                    stream_id = int(content["stream_id"])
                    if content.pop(RESYNC, False):
                        content["prev_id"] = [stream_id]
                    else:
                        previous = last.get(user_id)
                        content["prev_id"] = [previous] if previous is not None else []
                    last[user_id] = stream_id
                    if not content.get("deleted"):
                        device = next(
                            (
                                d
                                for d in listed["devices"]
                                if d["device_id"] == content["device_id"]
                            ),
                            None,
                        )
                        if device is None:
                            # Gone since, or without keys: what /user/devices says too.
                            content["deleted"] = True
                        else:
                            content["keys"] = device["keys"]
            out.append({"edu_type": edu.edu_type, "content": content})
        return out, {u: last[u] for u in about if u in last}

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
