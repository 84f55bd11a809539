"""The pusher sender: delivers notifying events to push gateways and by e-mail.

One background job per worker; the database makes it safe to run on several:
1. *Enqueue*: push actions of users who have pushers are turned into ``push_queue`` rows, one
   per pusher and event, as the shared cursor moves on (compare-and-swap: one worker wins
   each batch). Users with a live connection are skipped when ``push.only_when_offline``.
2. *Deliver*: a pusher with due rows is claimed (a lease in its row) and its queue sent in
   order. A failure backs the pusher off exponentially; rows survive restarts, so a
   notification is delivered once the gateway is back (or dropped after
   ``give_up_after_ms``). Pushkeys the gateway reports ``rejected`` lose their pusher.
E-mail rows wait ``email.notif_delay_ms``; then one digest reports every event of the pusher
that is still unread.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import orjson

from homeserver.accounts.ignored import IgnoreLists
from homeserver.core.clock import Clock
from homeserver.core.config import EmailConfig, PresenceConfig, PushConfig
from homeserver.core.errors import MatrixError
from homeserver.core.ids import UserID
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.net.outbound import Outbound, OutboundError, OutboundResponse, Reason
from homeserver.push.delivery_log import DeliveryFailures, gateway_host
from homeserver.push.email import MailedEvent, MailedRoom, Mailer
from homeserver.push.evaluator import tweaks_of
from homeserver.push.pushers import Unsubscriber, check_gateway_url_form
from homeserver.push.unread import UnreadCountService
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.push import PushStore
from homeserver.storage.pushers import Pusher, PusherStore, QueuedPush
from homeserver.storage.rooms import RoomStore, content_field
from homeserver.wakeups.bus import Bus, Wakeup

logger = logging.getLogger(__name__)

# Push actions (of users with pushers) queued per write at most.
ENQUEUE_BATCH_ROWS = 1000
# A scanned range with nothing to push is saved at most this often (a restart rescans it).
CURSOR_SAVE_INTERVAL_MS = 10_000
# After a wake-up, events of the next moment are gathered into the same round.
GATHER_S = 0.02
CLAIM_BATCH = 20
# Due times of this worker's queued rows and backed-off pushers remembered at most (beyond,
# the poll's rounds find them).
MAX_DUES_KEPT = 10_000
QUEUE_BATCH = 100
LEASE_MS = 5 * 60 * 1000  # a worker that dies holding a pusher frees it after this
UNSUBSCRIBE_PATH = "_homeserver/client/unsubscribe"
# A gateway answers {"rejected": [pushkeys]}; more than this is not a gateway's answer.
MAX_GATEWAY_RESPONSE_BYTES = 64 * 1024
# Unread counts last sent, remembered for this many pushers at most (then forgotten at once:
# a forgotten one costs one badge update that changes nothing).
MAX_BADGES_KEPT = 100_000


def _device(pusher: Pusher, tweaks: JsonDict) -> JsonDict:
    """A notification's ``devices`` entry for the pusher."""
    return {
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.pushkey_ts // 1000,
        "data": {k: v for k, v in pusher.data.items() if k != "url"},
        "tweaks": tweaks,
    }


def backoff_ms(attempts: int, config: PushConfig) -> int:
    """1, 2, 4, ... times the initial back-off, up to the maximum."""
    return int(min(config.retry_max_ms, config.retry_initial_ms * 2 ** min(attempts - 1, 30)))


class PusherSender:
    def __init__(
        self,
        db: Database,
        store: PusherStore,
        actions: PushStore,
        events: EventStore,
        rooms: RoomStore,
        unread: UnreadCountService,
        clock: Clock,
        bus: Bus,
        *,
        config: PushConfig,
        email: EmailConfig,
        presence: PresenceConfig,
        base_url: str,
        unsubscriber: Unsubscriber,
        ignored: IgnoreLists,
        outbound: Outbound,
    ) -> None:
        self._db = db
        self._store = store
        self._actions = actions
        self._events = events
        self._rooms = rooms
        self._unread = unread
        self._clock = clock
        self._config = config
        self._email = email
        self._presence = presence
        self._base_url = base_url
        self._unsubscriber = unsubscriber
        self._ignored = ignored
        self._mailer = Mailer(email)
        # Failed deliveries: counted (for metrics) and logged, rate-limited per pusher.
        self.failures = DeliveryFailures(clock)
        self._worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        # Events up to here were looked at and had nothing to queue; the stored cursor may be
        # behind (it is saved with queued pushes, or every CURSOR_SAVE_INTERVAL_MS).
        self._scanned = 0
        # The stored cursor as this worker last knew it. Behind is harmless: a range queued
        # since by another worker is found again, and queuing it fails on the cursor (read
        # again then).
        self._cursor: int | None = None
        # The newest events position a wake-up told of (committed).
        self._woken_upto = 0
        self._cursor_saved_ms = clock.now_ms()
        # No redirects: a pusher's URL is the notify endpoint itself.
        self._http = outbound.client(timeout_s=config.request_timeout_ms / 1000)
        # One round at a time on this worker: a round run directly (tests, admin tools) waits
        # for the background job's, rather than racing it for the same claims and requests.
        self._round = asyncio.Lock()
        # When rows this worker queued, or pushers it backed off, fall due (a heap of times):
        # a round woken by new events claims pushers only when one of these is due or it
        # queued rows itself; the poll's rounds claim always (another worker's rows, a lease
        # of a worker that died).
        self._dues: list[int] = []
        self._queued = False
        # Whether this worker runs the job now (it alone sends badge updates).
        self._running = False
        # The unread count last sent to each pusher as a badge update (or with a push).
        self._badges: dict[int, int] = {}
        self._badge_tasks: set[asyncio.Task[None]] = set()
        bus.subscribe(self._on_wakeup)

    async def _on_wakeup(self, wakeup: Wakeup) -> None:
        if wakeup.stream == Stream.EVENTS:
            self._woken_upto = max(self._woken_upto, wakeup.position)
            self._wake.set()
        elif wakeup.stream == Stream.RECEIPTS and wakeup.user_ids and self._running:
            # A user's own receipt: their badge may have changed. Only the worker running
            # the job sends (once across workers), in the background.
            task = asyncio.create_task(self._send_badges(wakeup.user_ids))
            self._badge_tasks.add(task)
            task.add_done_callback(self._badge_tasks.discard)

    async def _send_badges(self, user_ids: Sequence[str]) -> None:
        """Each HTTP pusher of these users gets their unread count alone when it changed
        since the last one this worker sent (spec, push gateway API: a notification that
        only updates badge counts has no ``event_id``). Best effort: a failure is counted
        and not retried; the next push carries the count anyway."""
        for user_id in user_ids:
            try:
                pushers = [p for p in await self._store.get_pushers(user_id) if p.kind == "http"]
                if not pushers:
                    continue
                joined = [
                    m.room_id for m in await self._rooms.get_user_memberships(user_id, ["join"])
                ]
                unread = await self._unread.total_unread(user_id, joined)
                for pusher in pushers:
                    if self._badges.get(pusher.id) == unread:
                        continue
                    if len(self._badges) >= MAX_BADGES_KEPT:
                        self._badges.clear()
                    self._badges[pusher.id] = unread
                    note = {"counts": {"unread": unread}, "devices": [_device(pusher, {})]}
                    await self._post(pusher, {"notification": note})
            except Exception:
                logger.exception("badge update failed", extra={"user_id": user_id})

    # --- the job -----------------------------------------------------------------------------

    async def run(self) -> None:
        """The background job: work, then sleep until woken or the poll interval is up.

        It runs on one worker at a time (a singleton job): starting, it frees the pushers
        another worker claimed and did not release (it died), instead of waiting out their
        claims."""
        woken = False
        self._running = True
        freed = await self._store.release_claims_except(self._worker)
        if freed:
            logger.info("pushers of a stopped worker freed", extra={"count": freed})
        try:
            while True:
                self._wake.clear()
                # Woken, the events position is the wake-ups'; else (the poll: a wake-up
                # may have been lost) it is read.
                await self._run_round(self._woken_upto if woken else None, claim_always=not woken)
                woken = False
                try:
                    # asyncio.timeout, not wait_for: wait_for can swallow a cancellation.
                    async with asyncio.timeout(self._config.poll_interval_ms / 1000):
                        await self._wake.wait()
                    woken = True
                    await asyncio.sleep(GATHER_S)
                except TimeoutError:
                    pass
        finally:
            self._running = False
            for task in list(self._badge_tasks):
                task.cancel()
            await self._http.aclose()

    async def run_once(self, upto: int | None = None) -> None:
        """A round: queue what events up to ``upto`` (committed; None: the current position)
        push, then send what is due."""
        await self._run_round(upto, claim_always=True)

    async def _run_round(self, upto: int | None, *, claim_always: bool) -> None:
        async with self._round:
            self._queued = False
            await self.enqueue_new(upto)
            now = self._clock.now_ms()
            due = bool(self._dues) and self._dues[0] <= now
            while self._dues and self._dues[0] <= now:
                heapq.heappop(self._dues)
            if claim_always or self._queued or due:
                await self.deliver_due()

    def _due_later(self, at: int) -> None:
        if at > self._clock.now_ms() and len(self._dues) < MAX_DUES_KEPT:
            heapq.heappush(self._dues, at)

    # --- enqueue -----------------------------------------------------------------------------

    async def enqueue_new(self, upto: int | None = None) -> None:
        if upto is None:
            upto = (await self._db.current_positions()).get(Stream.EVENTS, 0)
        if upto <= self._scanned:
            return
        cursor = self._cursor
        if cursor is None:
            cursor = self._cursor = await self._store.get_cursor(upto)
        while max(cursor, self._scanned) < upto:
            if (
                self._scanned > cursor
                and self._clock.now_ms() - self._cursor_saved_ms > CURSOR_SAVE_INTERVAL_MS
            ):
                # Save the skipped range now and then, so a restart does not rescan it all.
                if not await self._store.enqueue([], cursor, self._scanned):
                    cursor = self._cursor = await self._store.get_cursor(upto)
                    continue
                cursor = self._cursor = self._scanned
                self._cursor_saved_ms = self._clock.now_ms()
            start = max(cursor, self._scanned)
            pending, reach = await self._store.get_pending(start, upto, ENQUEUE_BATCH_ROWS)
            now = self._clock.now_ms()
            connected: set[str] = set()
            if self._config.only_when_offline and self._presence.enabled:
                connected = await self._store.get_connected_users(
                    {a.user_id for a, p in pending if p.kind == "http"},
                    now - self._presence.offline_after_ms,
                )
            rows = []
            for action, pusher in pending:
                if pusher.kind == "email":
                    if not self._email.enabled:
                        continue
                    due = action.ts + self._email.notif_delay_ms
                elif pusher.kind == "http" and action.user_id not in connected:
                    due = now
                else:
                    continue
                rows.append(
                    QueuedPush(
                        pusher.id,
                        action.stream_ordering,
                        action.user_id,
                        action.room_id,
                        action.event_id,
                        action.actions_json,
                        action.ts,
                        due,
                    )
                )
            if not rows:
                # Nothing to queue: move on in memory, without a write transaction per event.
                # Whoever scans this range again finds nothing either (push actions commit
                # with their event, below ``upto``).
                self._scanned = reach
                continue
            if not await self._store.enqueue(rows, cursor, reach):
                cursor = self._cursor = await self._store.get_cursor(upto)  # another worker did it
                continue
            cursor = self._cursor = self._scanned = reach
            self._cursor_saved_ms = self._clock.now_ms()
            self._queued = True
            for due_at in {r.due_ts for r in rows}:
                self._due_later(due_at)

    # --- deliver -----------------------------------------------------------------------------

    async def deliver_due(self) -> None:
        while True:
            now = self._clock.now_ms()
            # Unique per claim, so that two rounds of this worker never share a pusher.
            claim = f"{self._worker}:{secrets.token_hex(4)}"
            claimed = await self._store.claim_pushers(claim, now, LEASE_MS, CLAIM_BATCH)
            if not claimed:
                return
            await asyncio.gather(*(self._deliver(p, claim) for p in claimed))

    async def _deliver(self, pusher: Pusher, claim: str) -> None:
        # Released however this ends, cancelled too (a worker shutting down), so that the
        # pusher does not wait out the lease; what was not sent stays queued.
        attempts, next_ts = pusher.attempts, 0
        try:
            attempts = 0
            queue = await self._store.get_queue(pusher.id, QUEUE_BATCH)
            now = self._clock.now_ms()
            stale = [
                q.stream_ordering for q in queue if q.event_ts < now - self._config.give_up_after_ms
            ]
            if stale:
                logger.warning(
                    "pushes dropped after retrying too long",
                    extra={"pusher_id": pusher.id, "count": len(stale)},
                )
                await self._store.delete_queued(pusher.id, stale)
            dropped = set(stale)
            queue = [q for q in queue if q.stream_ordering not in dropped]
            ok: bool | None
            if pusher.kind == "email":
                ok = await self._send_email(pusher, queue)
            else:
                ok = await self._send_http(pusher, queue)
            if ok is None:
                return  # the pusher is gone
            if not ok:
                attempts = pusher.attempts + 1
                next_ts = self._clock.now_ms() + backoff_ms(attempts, self._config)
        except Exception:
            logger.exception("pusher failed", extra={"pusher_id": pusher.id})
            attempts = pusher.attempts + 1
            next_ts = self._clock.now_ms() + backoff_ms(attempts, self._config)
        finally:
            await self._store.release_pusher(
                pusher.id, claim, attempts=attempts, next_attempt_ts=next_ts
            )
            self._due_later(next_ts)

    async def _send_http(self, pusher: Pusher, queue: Sequence[QueuedPush]) -> bool | None:
        """True when the queue went out, False to back off, None when the pusher was removed
        (the gateway rejected its pushkey)."""
        for item in queue:
            body = await self._notification(pusher, item)
            if body is None:
                await self._store.delete_queued(pusher.id, [item.stream_ordering])
                continue
            sent = await self._post(pusher, body)
            if sent is not True:
                return sent
            await self._store.delete_queued(pusher.id, [item.stream_ordering])
        return True

    async def _post(self, pusher: Pusher, body: JsonDict) -> bool | None:
        """POST a notification to the pusher's gateway: True when it took it, False when
        it failed (counted), None when it rejected the pushkey (the pusher is removed)."""
        url = pusher.data.get("url")
        try:
            check_gateway_url_form(url, self._config)
        except MatrixError:
            self._failed(pusher, url, "gateway URL refused")
            return False
        assert isinstance(url, str)
        try:
            response = await self._http.request(
                "POST", url, json=body, max_bytes=MAX_GATEWAY_RESPONSE_BYTES
            )
        except OutboundError as e:
            if e.reason is Reason.REFUSED:
                self._failed(pusher, url, "gateway address refused")
            else:
                self._failed(pusher, url, f"unreachable: {e.reason}")
            return False
        if response.status_code // 100 != 2:
            self._failed(pusher, url, f"HTTP {response.status_code}")
            return False
        if pusher.pushkey in _rejected(response):
            logger.info("pushkey rejected: pusher removed", extra={"pusher_id": pusher.id})
            await self._store.delete_pushers_by_id([pusher.id])
            return None
        return True

    def _failed(self, pusher: Pusher, url: object, reason: str) -> None:
        self.failures.failed(
            pusher_id=pusher.id,
            app_id=pusher.app_id,
            pushkey=pusher.pushkey,
            host=gateway_host(url) if url is not None else "smtp",
            reason=reason,
        )

    async def _notification(self, pusher: Pusher, item: QueuedPush) -> JsonDict | None:
        """The /_matrix/push/v1/notify body (spec, push gateway API)."""
        actions = orjson.loads(item.actions_json)
        tweaks = tweaks_of(actions)
        device = _device(pusher, tweaks)
        joined = [
            m.room_id for m in await self._rooms.get_user_memberships(pusher.user_id, ["join"])
        ]
        unread = await self._unread.total_unread(pusher.user_id, joined)
        self._badges[pusher.id] = unread
        counts: JsonDict = {"unread": unread} if unread else {}
        note: JsonDict = {
            "event_id": item.event_id,
            "room_id": item.room_id,
            "counts": counts,
            "devices": [device],
        }
        # Queued before the user ignored its sender: not pushed after all.
        ignored = await self._ignored.ignored_users(pusher.user_id)
        if pusher.data.get("format") == "event_id_only" and not ignored:
            return {"notification": note}
        event = await self._events.get_event(item.event_id)
        if event is None or event.sender in ignored:
            return None
        if pusher.data.get("format") == "event_id_only":
            return {"notification": note}
        note.update(
            {
                # The event ID's name before the spec's push gateway API: Synapse still
                # sends it beside event_id, and older gateways (and SyTest) read it.
                "id": item.event_id,
                "type": event.type,
                "sender": event.sender,
                "prio": "high" if tweaks.get("sound") or tweaks.get("highlight") else "low",
            }
        )
        member = await self._rooms.get_membership(item.room_id, event.sender)
        if member is not None and member.displayname:
            note["sender_display_name"] = member.displayname
        state = (
            await self._rooms.get_current_state_contents(
                [item.room_id], ["m.room.name", "m.room.canonical_alias"]
            )
        ).get(item.room_id, {})
        name = content_field(state.get("m.room.name"), "name")
        alias = content_field(state.get("m.room.canonical_alias"), "alias")
        if name or alias:
            # The room's display name (spec, client-server: "calculating the display name
            # for a room"): its name, else its canonical alias.
            note["room_name"] = name or alias
        if alias:
            note["room_alias"] = alias
        if event.type == "m.room.member":
            note["user_is_target"] = event.state_key == pusher.user_id
            # Not in the push gateway API, but Synapse sends it and gateways read it to
            # tell an invite from other membership changes.
            membership = event.content.get("membership")
            if isinstance(membership, str):
                note["membership"] = membership
        if self._config.include_content and event.redacted_by is None and event.content:
            note["content"] = event.content
        return {"notification": note}

    # --- e-mail ------------------------------------------------------------------------------

    async def _send_email(self, pusher: Pusher, queue: Sequence[QueuedPush]) -> bool:
        if not self._email.enabled:
            await self._store.delete_queued(pusher.id, [q.stream_ordering for q in queue])
            return True
        unread = await self._actions.unread_among(
            pusher.user_id, [q.stream_ordering for q in queue]
        )
        wanted = [q for q in queue if q.stream_ordering in unread]
        if wanted:
            rooms = await self._mailed_rooms(pusher.user_id, wanted)
            if rooms:
                user_name = await self._user_name(pusher.user_id, wanted[0].room_id)
                message = self._mailer.missed_messages(
                    pusher.pushkey, user_name, rooms, self._unsubscribe_url(pusher)
                )
                try:
                    await self._mailer.send(message)
                except Exception as e:  # aiosmtplib's errors and OSError alike
                    self._failed(pusher, None, f"mail not sent: {type(e).__name__}")
                    return False
        await self._store.delete_queued(pusher.id, [q.stream_ordering for q in queue])
        return True

    async def _mailed_rooms(self, user_id: str, items: Sequence[QueuedPush]) -> list[MailedRoom]:
        loaded = await self._events.get_events(q.event_id for q in items)
        ignored = await self._ignored.ignored_users(user_id)
        by_room: dict[str, list[StoredEvent]] = {}
        for q in items:
            event = loaded.get(q.event_id)
            if event is not None and event.sender not in ignored:
                by_room.setdefault(q.room_id, []).append(event)
        state = await self._rooms.get_current_state_contents(
            list(by_room), ["m.room.name", "m.room.canonical_alias"]
        )
        out = []
        for room_id, room_events in by_room.items():
            names: dict[str, str] = {}
            mailed = []
            for event in room_events:
                if event.sender not in names:
                    m = await self._rooms.get_membership(room_id, event.sender)
                    names[event.sender] = m.displayname if m and m.displayname else event.sender
                mailed.append(
                    MailedEvent(names[event.sender], _event_text(event), event.origin_server_ts)
                )
            room_state = state.get(room_id, {})
            name = (
                content_field(room_state.get("m.room.name"), "name")
                or content_field(room_state.get("m.room.canonical_alias"), "alias")
                or await self._room_fallback_name(room_id, user_id)
            )
            out.append(MailedRoom(room_id, name, tuple(mailed)))
        return out

    async def _room_fallback_name(self, room_id: str, user_id: str) -> str:
        heroes = await self._rooms.get_heroes(room_id, user_id, 3)
        names = []
        for hero in heroes:
            m = await self._rooms.get_membership(room_id, hero)
            names.append(m.displayname if m and m.displayname else hero)
        return ", ".join(names) if names else "an empty room"

    async def _user_name(self, user_id: str, room_id: str) -> str:
        m = await self._rooms.get_membership(room_id, user_id)
        return m.displayname if m and m.displayname else user_id

    def _unsubscribe_url(self, pusher: Pusher) -> str:
        token = self._unsubscriber.token(UserID(pusher.user_id), pusher.app_id, pusher.pushkey)
        return f"{self._base_url}{UNSUBSCRIBE_PATH}?token={quote(token)}"


def _rejected(response: OutboundResponse) -> set[str]:
    try:
        body: Any = response.json()
    except ValueError:
        return set()
    rejected = body.get("rejected") if isinstance(body, dict) else None
    return {k for k in rejected if isinstance(k, str)} if isinstance(rejected, list) else set()


def _event_text(event: StoredEvent) -> str:
    if event.redacted_by is not None:
        return "(deleted)"
    if event.type == "m.room.encrypted":
        return "(encrypted message)"
    if event.type == "m.room.member":
        return (
            "invited you to the room"
            if event.content.get("membership") == "invite"
            else "membership change"
        )
    body = event.content.get("body")
    return body if isinstance(body, str) else f"({event.type})"
