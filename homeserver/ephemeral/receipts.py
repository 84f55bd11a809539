"""Receipts and read markers (spec: receipts, read and unread markers).

``m.read`` receipts are shown to the room, ``m.read.private`` ones only to their owner, both
as ``m.receipt`` ephemeral events; ``m.fully_read`` lives in the user's room account data.
Also the sync's ``ephemeral`` source, which adds typing notifications to the receipts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID, UserID
from homeserver.core.outbox import EduOutbox
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.receipts import MAIN_THREAD, READ, READ_PRIVATE, ReceiptStore
from homeserver.storage.rooms import RoomStore
from homeserver.sync.sources import RoomSource
from homeserver.wakeups.notifier import Notifier

FULLY_READ = "m.fully_read"
RECEIPT_TYPES = (READ, READ_PRIVATE, FULLY_READ)
# spec, threaded read receipts: following relations to find an event's thread, "a maximum
# of 3 hops is recommended".
MAX_THREAD_HOPS = 3


class ServerAccountData(Protocol):
    """Where ``m.fully_read`` goes: room account data that clients cannot write directly."""

    async def set_server_account_data(
        self, user_id: UserID, room_id: RoomID | None, data_type: str, content: JsonDict
    ) -> None: ...


class ReceiptService:
    def __init__(
        self,
        store: ReceiptStore,
        events: EventStore,
        rooms: RoomStore,
        account_data: ServerAccountData,
        notifier: Notifier,
        clock: Clock,
        outbox: EduOutbox | None = None,
    ) -> None:
        self._store = store
        # Public read receipts reach the other servers in the room (federation).
        self._outbox = outbox
        self._events = events
        self._rooms = rooms
        self._account_data = account_data
        self._notifier = notifier
        self._clock = clock

    async def post_receipt(
        self,
        requester: Requester,
        room_id: RoomID,
        receipt_type: str,
        event_id: EventID,
        thread_id: str | None,
    ) -> None:
        """POST /rooms/{roomId}/receipt/{receiptType}/{eventId}"""
        if receipt_type not in RECEIPT_TYPES:
            raise MatrixError(
                Codes.INVALID_PARAM, f"Receipt type must be one of {', '.join(RECEIPT_TYPES)}"
            )
        if thread_id == "":
            raise MatrixError(Codes.INVALID_PARAM, "thread_id must be a non-empty string")
        await self._require_joined(requester.user_id, room_id)
        if receipt_type == FULLY_READ:
            # spec: this endpoint "effectively calls /read_markers" for m.fully_read.
            if thread_id is not None:
                raise MatrixError(Codes.INVALID_PARAM, "thread_id is not allowed for m.fully_read")
            await self._event_in_room(room_id, event_id)
            await self._set_fully_read(requester.user_id, room_id, event_id)
            return
        event = await self._event_in_room(room_id, event_id)
        if thread_id is not None:
            await self._check_thread(event, thread_id)
        await self._put(requester.user_id, room_id, receipt_type, event, thread_id)

    async def set_read_markers(
        self,
        requester: Requester,
        room_id: RoomID,
        fully_read: EventID | None,
        read: EventID | None,
        read_private: EventID | None,
    ) -> None:
        """POST /rooms/{roomId}/read_markers: all three checked before any is written."""
        await self._require_joined(requester.user_id, room_id)
        loaded: dict[str, StoredEvent] = {}
        for event_id in (fully_read, read, read_private):
            if event_id is not None:
                loaded[event_id] = await self._event_in_room(room_id, event_id)
        if fully_read is not None:
            await self._set_fully_read(requester.user_id, room_id, fully_read)
        if read is not None:
            await self._put(requester.user_id, room_id, READ, loaded[read], None)
        if read_private is not None:
            await self._put(requester.user_id, room_id, READ_PRIVATE, loaded[read_private], None)

    async def room_events(
        self,
        requester: Requester,
        room_ids: Sequence[str],
        since: StreamToken | None,
        now: StreamToken,
    ) -> dict[str, list[JsonDict]]:
        """``m.receipt`` events of what moved since the token (everything without one), one
        per room and thread (spec: "batched into one event per room and thread")."""
        after = since.get(Stream.RECEIPTS) if since is not None else None
        upto = now.get(Stream.RECEIPTS)
        if after is not None and after >= upto:
            return {}
        found = await self._store.get_receipts(room_ids, requester.user_id, after, upto)
        by_room: dict[str, dict[str, JsonDict]] = {}
        for r in found:
            content = by_room.setdefault(r.room_id, {}).setdefault(r.thread_id or "", {})
            receipt: JsonDict = {"ts": r.ts}
            if r.thread_id is not None:
                receipt["thread_id"] = r.thread_id
            content.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = receipt
        return {
            room_id: [{"type": "m.receipt", "content": threads[t]} for t in sorted(threads)]
            for room_id, threads in by_room.items()
        }

    # --- helpers ---------------------------------------------------------------------------

    async def _put(
        self,
        user_id: str,
        room_id: str,
        receipt_type: str,
        event: StoredEvent,
        thread_id: str | None,
    ) -> None:
        position = await self._store.put_receipt(
            room_id,
            receipt_type,
            user_id,
            thread_id,
            event.event_id,
            event.stream_ordering,
            self._clock.now_ms(),
        )
        if position is None:
            return
        if receipt_type == READ_PRIVATE:
            # Nobody else may learn of it, so nobody else needs waking.
            await self._notifier.notify(Stream.RECEIPTS, position, user_ids=(user_id,))
        else:
            # The user too: a receipt of theirs may change their push badge.
            await self._notifier.notify(
                Stream.RECEIPTS, position, room_id=room_id, user_ids=(user_id,)
            )
            if self._outbox is not None:
                await self._outbox.read_receipt(
                    room_id, user_id, event.event_id, thread_id, self._clock.now_ms()
                )

    async def put_remote_receipt(
        self, room_id: str, user_id: str, event_ids: Sequence[str], thread_id: str | None, ts: int
    ) -> bool:
        """An ``m.read`` receipt in an ``m.receipt`` EDU from the user's server: moved to the
        newest of ``event_ids`` we hold in the room. False (ignored) when the user is not
        joined or none of the events is known here."""
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            return False
        loaded = await self._events.get_events(event_ids)
        known = [e for e in loaded.values() if e.room_id == room_id and e.served]
        if not known:
            return False
        event = max(known, key=lambda e: e.stream_ordering)
        position = await self._store.put_receipt(
            room_id, READ, user_id, thread_id, event.event_id, event.stream_ordering, ts
        )
        if position is not None:
            await self._notifier.notify(Stream.RECEIPTS, position, room_id=room_id)
        return True

    async def _set_fully_read(self, user_id: UserID, room_id: RoomID, event_id: str) -> None:
        await self._account_data.set_server_account_data(
            user_id, room_id, FULLY_READ, {"event_id": event_id}
        )

    async def _require_joined(self, user_id: str, room_id: str) -> None:
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            raise MatrixError(Codes.FORBIDDEN, "You are not joined to this room")

    async def _event_in_room(self, room_id: str, event_id: str) -> StoredEvent:
        event = await self._events.get_event(event_id)
        if event is None or event.room_id != room_id:
            raise MatrixError(Codes.NOT_FOUND, "Event not found in this room")
        return event

    async def _check_thread(self, event: StoredEvent, thread_id: str) -> None:
        """spec: 400 when the thread_id is empty, malformed or not the event's thread."""
        if thread_id != MAIN_THREAD:
            if not thread_id.startswith("$"):
                raise MatrixError(
                    Codes.INVALID_PARAM, 'thread_id must be "main" or a thread root\'s event ID'
                )
            if event.event_id == thread_id:
                return  # a thread's root may be marked read within its thread
        if await self._thread_of(event) != thread_id:
            raise MatrixError(Codes.INVALID_PARAM, "The event is not in that thread")

    async def _thread_of(self, event: StoredEvent) -> str:
        current = event
        for _ in range(MAX_THREAD_HOPS):
            relation = current.content.get("m.relates_to")
            parent_id = relation.get("event_id") if isinstance(relation, dict) else None
            if not isinstance(relation, dict) or not isinstance(parent_id, str):
                return MAIN_THREAD
            if relation.get("rel_type") == "m.thread":
                return parent_id
            parent = await self._events.get_event(parent_id)
            if parent is None or parent.room_id != event.room_id:
                return MAIN_THREAD
            current = parent
        return MAIN_THREAD


class EphemeralSource:
    """The sync's ``ephemeral`` section: typing, then receipts, room by room."""

    def __init__(self, *sources: RoomSource) -> None:
        self._sources = sources

    async def room_events(
        self,
        requester: Requester,
        room_ids: Sequence[str],
        since: StreamToken | None,
        now: StreamToken,
    ) -> dict[str, list[JsonDict]]:
        merged: dict[str, list[JsonDict]] = {}
        for source in self._sources:
            for room_id, events in (
                await source.room_events(requester, room_ids, since, now)
            ).items():
                merged.setdefault(room_id, []).extend(events)
        return merged
