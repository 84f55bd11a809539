"""Transactions to application services: what happened that concerns each service, pushed
as ``PUT /_matrix/app/v1/transactions/{txnId}``.

Each service has its own task, so one slow or dead service never holds up another, and one
transaction in flight at a time. A round reads the streams after the service's cursors
(events, and receipts, typing and presence for services with ``receive_ephemeral``), keeps
what concerns the service and, in one write, queues it as the next numbered transaction and
moves the cursors. The queued transaction is then sent, the same body under the same number,
until the service answers 200, with exponential back-off between attempts; only then is the
next one built. Queue and cursors are in the database, so a restart resumes where the last
process stopped: a transaction the service took just before the restart may come once more
with its number, which the spec lets the service recognise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from homeserver.appservice.client import AppServiceClient
from homeserver.appservice.registration import AppService, AppServices
from homeserver.core.clock import Clock
from homeserver.core.config import AppServiceConfig
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.rooms.serialize import client_event
from homeserver.storage.appservice import AppServiceStore, Cursors, QueuedTxn
from homeserver.storage.database import Database
from homeserver.storage.events import StoredEvent
from homeserver.wakeups.bus import Bus, Wakeup

logger = logging.getLogger(__name__)

# A worker that dies sending for a service frees it after this plus the request timeout (a
# round renews the lease as it starts, and lasts at most about one request).
LEASE_MS = 60 * 1000
EPHEMERAL_STREAMS = frozenset({Stream.RECEIPTS, Stream.TYPING, Stream.PRESENCE})
# After a wake-up, what happens in the next moment joins the same transaction.
GATHER_S = 0.02
UNSTABLE_EPHEMERAL_KEY = "de.sorunome.msc2409.ephemeral"
UNSTABLE_TO_DEVICE_KEY = "de.sorunome.msc2409.to_device"


def backoff_ms(attempts: int, config: AppServiceConfig) -> int:
    """1, 2, 4, ... times the initial back-off, up to the maximum."""
    return int(min(config.retry_max_ms, config.retry_initial_ms * 2 ** min(attempts - 1, 30)))


@dataclass(frozen=True, slots=True)
class RoomFacts:
    """What decides whether a room concerns a service: its joined members and aliases."""

    members: dict[str, list[str]]
    aliases: dict[str, list[str]]

    def concerns(self, service: AppService, room_id: str) -> bool:
        return (
            service.is_room_in_namespace(room_id)
            or any(service.is_user_in_namespace(u) for u in self.members.get(room_id, ()))
            or any(service.is_alias_in_namespace(a) for a in self.aliases.get(room_id, ()))
        )


class AppServiceSender:
    def __init__(
        self,
        db: Database,
        store: AppServiceStore,
        services: AppServices,
        client: AppServiceClient,
        clock: Clock,
        bus: Bus,
        config: AppServiceConfig,
    ) -> None:
        self._db = db
        self._store = store
        self._services = [s for s in services.all if s.url is not None]
        self._client = client
        self._clock = clock
        self._config = config
        self._worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = {s.id: asyncio.Event() for s in self._services}
        # One round per service at a time on this worker (the job's, or a test's).
        self._locks = {s.id: asyncio.Lock() for s in self._services}
        # Until when this worker holds each service's lease (as last written).
        self._held_until: dict[str, int] = {}
        bus.subscribe(self._on_wakeup)

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        if wakeup.stream == Stream.EVENTS or wakeup.stream in EPHEMERAL_STREAMS:
            for event in self._wake.values():
                event.set()

    async def prepare(self) -> None:
        """At start-up: a service seen for the first time starts at the current positions,
        before any request is served (nothing that happens from then on is missed)."""
        for service in self._services:
            await self._store.get_state(service.id)

    # --- the job -------------------------------------------------------------------------------

    async def run(self) -> None:
        """The background job: one task per service that has a URL."""
        if not self._services:
            return
        try:
            async with asyncio.TaskGroup() as group:
                for service in self._services:
                    group.create_task(self._serve(service))
        finally:
            await self._client.aclose()

    async def _serve(self, service: AppService) -> None:
        try:
            await self._serve_forever(service)
        finally:
            # Stopping (a restart): the next process takes the service over at once.
            self._held_until.pop(service.id, None)
            try:
                await self._store.release(service.id, self._worker)
            except Exception:
                logger.exception("application service lease not released")

    async def _serve_forever(self, service: AppService) -> None:
        wake = self._wake[service.id]
        while True:
            wake.clear()
            try:
                wait_ms = await self.run_once(service.id)
            except Exception:
                # A database error: logged, tried again at the next poll; the other
                # services' tasks go on.
                logger.exception(
                    "application service round failed", extra={"app_service": service.id}
                )
                wait_ms = self._config.poll_interval_ms
            if wait_ms == 0:
                continue
            if wait_ms is not None:
                # Backing off (or another worker sends): new events change nothing until then.
                await asyncio.sleep(wait_ms / 1000)
                continue
            try:
                async with asyncio.timeout(self._config.poll_interval_ms / 1000):
                    await wake.wait()
                await asyncio.sleep(GATHER_S)
            except TimeoutError:
                pass

    async def run_once(self, service_id: str) -> int | None:
        """A round for one service: send its queued transaction, or build and send the next.
        Returns how long to wait before the next round (ms; 0: at once, None: until woken
        or the poll interval)."""
        service = next(s for s in self._services if s.id == service_id)
        async with self._locks[service_id]:
            now = self._clock.now_ms()
            state = await self._store.get_state(service_id)
            lease_ms = LEASE_MS + self._config.request_timeout_ms
            # The lease is renewed once half of it is gone, not at every round (a write).
            if now + lease_ms // 2 > self._held_until.get(service_id, 0):
                if not await self._store.claim(service_id, self._worker, now, lease_ms):
                    self._held_until.pop(service_id, None)
                    return self._config.poll_interval_ms
                self._held_until[service_id] = now + lease_ms
            txn = await self._store.get_first_txn(service_id)
            if txn is not None and state.next_attempt_ts > now:
                return state.next_attempt_ts - now
            if txn is None:
                built = await self._build(service, state.cursors)
                if built is False:
                    return 0  # another worker moved the cursors: read them again
                if built is None:
                    return None
                assert isinstance(built, QueuedTxn)
                txn = built
            if await self._client.put_transaction(service, txn.txn_id, txn.body):
                await self._store.complete_txn(service_id, txn.txn_id)
                return 0
            attempts = state.attempts + 1  # reset when a transaction is taken
            delay = backoff_ms(attempts, self._config)
            await self._store.record_failure(service_id, attempts, self._clock.now_ms() + delay)
            logger.info(
                "application service transaction failed",
                extra={"app_service": service_id, "txn_id": txn.txn_id, "attempts": attempts},
            )
            return delay

    # --- building a transaction ---------------------------------------------------------------

    async def _build(self, service: AppService, seen: Cursors) -> QueuedTxn | None | bool:
        positions = await self._db.current_positions()
        limit = self._config.max_events_per_transaction
        upto = positions.get(Stream.EVENTS, 0)
        new_events = await self._store.get_events(seen.events, upto, limit)
        events_to = upto if len(new_events) < limit else new_events[-1].stream_ordering
        ephemeral_to = (
            positions.get(Stream.RECEIPTS, 0),
            positions.get(Stream.TYPING, 0),
            positions.get(Stream.PRESENCE, 0),
        )
        # What the service did not ask for is skipped (its cursor follows the stream), so
        # that opting in later does not send the history.
        to = Cursors(
            max(seen.events, events_to),
            max(seen.receipts, ephemeral_to[0]),
            max(seen.typing, ephemeral_to[1]),
            max(seen.presence, ephemeral_to[2]),
            max(seen.to_device, positions.get(Stream.TO_DEVICE, 0)),
        )
        if to == seen:
            return None
        events = await self._events_for(service, new_events)
        ephemeral: list[JsonDict] = []
        if service.receive_ephemeral:
            ephemeral = await self._ephemeral_for(service, seen, to)
        to_device: list[JsonDict] = []
        if service.receive_ephemeral and self._config.to_device_messages:
            to_device = await self._to_device_for(service, seen, to)
        body: str | None = None
        if events or ephemeral or to_device:
            payload: JsonDict = {"events": events}
            if ephemeral:
                # spec v1.13 names it "ephemeral"; bridges made before read MSC2409's name.
                payload["ephemeral"] = ephemeral
                payload[UNSTABLE_EPHEMERAL_KEY] = ephemeral
            if to_device:
                payload[UNSTABLE_TO_DEVICE_KEY] = to_device  # MSC4203, not in the spec yet
            body = orjson.dumps(payload).decode()
        return await self._store.advance(service.id, seen, to, body, self._clock.now_ms())

    async def _room_facts(self, room_ids: Iterable[str]) -> RoomFacts:
        ids = set(room_ids)
        return RoomFacts(
            await self._store.get_joined_members(ids), await self._store.get_aliases(ids)
        )

    async def _events_for(self, service: AppService, events: list[StoredEvent]) -> list[JsonDict]:
        if not events:
            return []
        facts = await self._room_facts(e.room_id for e in events)
        chosen = [
            e
            for e in events
            if service.is_user_in_namespace(e.sender)
            or (e.type == "m.room.member" and service.is_user_in_namespace(e.state_key or ""))
            or facts.concerns(service, e.room_id)
        ]
        versions = await self._store.get_room_versions({e.room_id for e in chosen})
        now = self._clock.now_ms()
        out = []
        for event in chosen:
            try:
                out.append(client_event(event, now, versions.get(event.room_id, "10")))
            except Exception:
                # One event that cannot be rendered is left out, not the transaction.
                logger.exception("event left out of a transaction", extra={"id": event.event_id})
        return out

    async def _ephemeral_for(
        self, service: AppService, seen: Cursors, to: Cursors
    ) -> list[JsonDict]:
        out: list[JsonDict] = []
        receipts = await self._store.get_receipts(seen.receipts, to.receipts)
        typing = await self._store.get_typing(seen.typing, to.typing, self._clock.now_ms())
        presence = await self._store.get_presence(seen.presence, to.presence)
        facts = await self._room_facts({r.room_id for r in receipts} | set(typing))
        by_room: dict[str, JsonDict] = {}
        for r in receipts:
            if not facts.concerns(service, r.room_id):
                continue
            content = by_room.setdefault(r.room_id, {})
            data: JsonDict = {"ts": r.ts}
            if r.thread_id:
                data["thread_id"] = r.thread_id
            content.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = data
        for room_id, content in by_room.items():
            out.append({"type": "m.receipt", "room_id": room_id, "content": content})
        for room_id, user_ids in typing.items():
            if facts.concerns(service, room_id):
                out.append(
                    {"type": "m.typing", "room_id": room_id, "content": {"user_ids": user_ids}}
                )
        if presence:
            # A user's presence concerns the service when the user is one of its own or
            # shares a room with one of them.
            rooms_of = await self._store.get_joined_rooms({p.user_id for p in presence})
            shared = await self._room_facts({r for rs in rooms_of.values() for r in rs})
            now = self._clock.now_ms()
            for p in presence:
                if not (
                    service.is_user_in_namespace(p.user_id)
                    or any(shared.concerns(service, r) for r in rooms_of.get(p.user_id, ()))
                ):
                    continue
                status: JsonDict = {
                    "presence": p.state,
                    "last_active_ago": max(0, now - p.last_active_ts),
                    "currently_active": p.currently_active,
                }
                if p.status_msg is not None:
                    status["status_msg"] = p.status_msg
                out.append({"type": "m.presence", "sender": p.user_id, "content": status})
        return out

    async def _to_device_for(
        self, service: AppService, seen: Cursors, to: Cursors
    ) -> list[JsonDict]:
        """To-device messages for the devices of the service's users (MSC4203): each names
        the user and device it is for, as one transaction carries many users'."""
        rows = await self._store.get_to_device(seen.to_device, to.to_device)
        return [
            {
                "type": r.type,
                "sender": r.sender,
                "content": r.content,
                "to_user_id": r.user_id,
                "to_device_id": r.device_id,
            }
            for r in rows
            if service.is_user_in_namespace(r.user_id)
        ]

    # --- for tests and operators ----------------------------------------------------------------

    async def queue_length(self, service_id: str) -> int:
        return await self._store.count_txns(service_id)
