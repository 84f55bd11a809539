"""The deprecated sync API the spec still lists: ``/initialSync``, ``/events`` (and peeking
into world-readable rooms with ``/events?room_id=``), ``/rooms/{roomId}/initialSync`` and
``/events/{eventId}``. Older bridges and bots still call them.

``/initialSync`` and ``/events`` are views of ``SyncService``'s answers (one source of what a
user may see); a room's initial sync and peeking read through ``RoomService``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from homeserver.accounts.account_data import AccountDataService
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID
from homeserver.core.streams import RoomPosition, Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.ephemeral.presence import PresenceService
from homeserver.ephemeral.receipts import ReceiptService
from homeserver.filters.matching import EventFilter, SyncFilter
from homeserver.rooms.service import RoomService
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.rooms import RoomStore
from homeserver.sync.service import SyncRequest, SyncService
from homeserver.wakeups.notifier import Notifier

DEFAULT_LIMIT = 10  # messages per room in an initial sync (Synapse's and the spec's example)
MAX_LIMIT = 100
PEEK_LIMIT = 100
PUSH_RULES = "m.push_rules"


class LegacySync:
    def __init__(
        self,
        sync: SyncService,
        rooms: RoomService,
        events: EventStore,
        room_store: RoomStore,
        db: Database,
        notifier: Notifier,
        presence: PresenceService,
        account_data: AccountDataService,
        receipts: ReceiptService,
    ) -> None:
        self._presence = presence
        self._account_data = account_data
        self._receipts = receipts
        self._sync = sync
        self._rooms = rooms
        self._events = events
        self._room_store = room_store
        self._db = db
        self._notifier = notifier

    async def _now(self) -> StreamToken:
        return StreamToken(await self._db.current_positions())

    # --- GET /initialSync -----------------------------------------------------------------

    async def initial_sync(
        self, requester: Requester, limit: int | None, archived: bool = False
    ) -> JsonDict:
        """``archived``: rooms the user left (or was banned from) too, as of their leaving."""
        limit = DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT)
        sync_filter = SyncFilter(timeline=EventFilter(limit=limit), include_leave=archived)
        answer = await self._sync.sync(
            requester,
            SyncRequest(since=None, timeout_ms=0, full_state=False, filter=sync_filter),
        )
        end = str(answer["next_batch"])
        rooms = answer.get("rooms", {})
        out: list[JsonDict] = []
        for room_id, entry in rooms.get("join", {}).items():
            out.append(await self._room(requester, RoomID(room_id), entry, end, "join"))
        for room_id, entry in rooms.get("leave", {}).items():
            room_id = RoomID(room_id)
            m = await self._room_store.get_membership(room_id, requester.user_id)
            membership = m.membership if m is not None else "leave"
            out.append(await self._room(requester, room_id, entry, end, membership))
        for room_id in rooms.get("invite", {}):
            room: JsonDict = {"room_id": room_id, "membership": "invite"}
            invite = await self._invite_event(requester, RoomID(room_id))
            if invite is not None:
                room["invite"] = invite
            out.append(room)
        receipts = [
            _with_room(e, room_id)
            for room_id, entry in rooms.get("join", {}).items()
            for e in entry.get("ephemeral", {}).get("events", [])
            if e.get("type") == "m.receipt"
        ]
        return {
            "end": end,
            "rooms": out,
            "presence": [_presence(e) for e in answer.get("presence", {}).get("events", [])],
            # Push rules have their own endpoint here (as in Synapse's answer).
            "account_data": [
                e
                for e in answer.get("account_data", {}).get("events", [])
                if e.get("type") != PUSH_RULES
            ],
            "receipts": receipts,
        }

    async def _room(
        self, requester: Requester, room_id: RoomID, entry: JsonDict, end: str, membership: str
    ) -> JsonDict:
        timeline = entry.get("timeline", {})
        chunk = [_with_room(e, room_id) for e in timeline.get("events", [])]
        state = [_v1(e) for e in await self._rooms.get_state(requester, room_id)]
        messages: JsonDict = {"chunk": chunk, "end": end}
        if timeline.get("prev_batch"):
            messages["start"] = timeline["prev_batch"]
        return {
            "room_id": room_id,
            "membership": membership,
            "messages": messages,
            "state": state,
            "visibility": _visibility(state),
            "account_data": entry.get("account_data", {}).get("events", []),
        }

    async def _invite_event(self, requester: Requester, room_id: RoomID) -> JsonDict | None:
        """The invite of the requester into a room, as a client event."""
        membership = await self._room_store.get_membership(room_id, requester.user_id)
        if membership is None or membership.membership != "invite":
            return None
        event = await self._events.get_event(membership.event_id)
        if event is None:
            return None
        version = await self._rooms.room_version(room_id)
        return (await self._rooms.serialize(requester, [event], version))[0]

    # --- GET /rooms/{roomId}/initialSync --------------------------------------------------

    async def room_initial_sync(
        self, requester: Requester, room_id: RoomID, limit: int | None = None
    ) -> JsonDict:
        """``limit``: the most messages (Synapse's parameter, not the spec's; default 10)."""
        _, membership = await self._rooms.access(requester, room_id)
        page = await self._rooms.messages(
            requester,
            room_id,
            from_token=None,
            to_token=None,
            backwards=True,
            limit=DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT),
            event_filter=EventFilter(),
        )
        chunk = [_v1(e) for e in reversed(page.chunk)]
        state = [_v1(e) for e in await self._rooms.get_state(requester, room_id)]
        now = (await self._now()).serialize()
        # ``start`` is always there (as Synapse, and clients of this old endpoint expect):
        # at the room's beginning when no earlier events are left, where /messages backwards
        # finds nothing more.
        if page.end is not None:
            start = page.end
        elif limit == 0:  # an empty chunk at the present: everything is before it
            start = page.start
        else:
            start = RoomPosition.at_stream(0).serialize()
        messages: JsonDict = {"chunk": chunk, "start": start, "end": now}
        presence: list[JsonDict] = []
        receipts: list[JsonDict] = []
        account_data: list[JsonDict] = []
        if membership is not None and membership.membership == "join":
            # A member's view of the present; a departed member's stops at its leaving,
            # and a peeker has none of these.
            at = await self._now()
            joined = {
                e["state_key"]
                for e in state
                if e.get("type") == "m.room.member"
                and e.get("content", {}).get("membership") == "join"
            }
            presence = [
                _presence(e)
                for e in await self._presence.global_events(requester, None, at)
                if e.get("sender") in joined
            ]
            receipts = [
                _with_room(e, room_id)
                for e in (await self._receipts.room_events(requester, [room_id], None, at)).get(
                    room_id, []
                )
            ]
        if membership is not None:
            at = await self._now()
            account_data = (
                await self._account_data.room_events(requester, [room_id], None, at)
            ).get(room_id, [])
        body: JsonDict = {
            "room_id": room_id,
            "messages": messages,
            "state": state,
            "visibility": _visibility(state),
            "presence": presence,
            "receipts": receipts,
            "account_data": account_data,
        }
        # A peeker of a world-readable room has no membership (spec: the field is optional).
        if membership is not None:
            body["membership"] = membership.membership
        return body

    # --- GET /events/{eventId} ------------------------------------------------------------

    async def get_event(self, requester: Requester, event_id: EventID) -> JsonDict:
        event = await self._events.get_event(event_id)
        if event is None or not event.served:
            raise MatrixError(Codes.NOT_FOUND, "Event not found")
        try:
            return await self._rooms.get_event(requester, RoomID(event.room_id), event_id)
        except MatrixError as e:
            # Outside the room, the event is as unknown as any other (no probing).
            if e.code == Codes.FORBIDDEN:
                raise MatrixError(Codes.NOT_FOUND, "Event not found") from None
            raise

    # --- GET /events ----------------------------------------------------------------------

    async def events(
        self,
        requester: Requester,
        since: str | None,
        timeout_ms: int,
        room_id: RoomID | None,
        limit: int | None = None,
    ) -> JsonDict:
        """``limit``: the most events a peek returns (at most ``PEEK_LIMIT``)."""
        limit = PEEK_LIMIT if limit is None else min(limit, PEEK_LIMIT)
        if room_id is not None:
            return await self._peek(requester, room_id, since, timeout_ms, limit)
        if requester.is_guest:
            # spec (guest access): guests may call /events only to peek into a room.
            raise MatrixError(Codes.GUEST_ACCESS_FORBIDDEN, "Guests may only peek: give room_id")
        start = StreamToken.parse(since) if since is not None else await self._now()
        # The timeline's limit is high: a long-poll returns everything since the token.
        # The sync's timeline keeps the newest events of a room: ``limit`` (the oldest first)
        # would drop the earliest, so a long-poll gets every new event (up to PEEK_LIMIT).
        sync_filter = SyncFilter(timeline=EventFilter(limit=PEEK_LIMIT))
        answer = await self._sync.sync(
            requester,
            SyncRequest(since=start, timeout_ms=timeout_ms, full_state=False, filter=sync_filter),
        )
        chunk: list[JsonDict] = []
        rooms = answer.get("rooms", {})
        for joined_id, entry in rooms.get("join", {}).items():
            chunk.extend(
                _with_room(e, joined_id) for e in entry.get("timeline", {}).get("events", [])
            )
            ephemeral = entry.get("ephemeral", {}).get("events", [])
            chunk.extend(_with_room(e, joined_id) for e in ephemeral)
            # Room account data and tags, each with its room (as Synapse's stream has them).
            room_data = entry.get("account_data", {}).get("events", [])
            chunk.extend(_with_room(e, joined_id) for e in room_data)
        for invited_id in rooms.get("invite", {}):
            invite = await self._invite_event(requester, RoomID(invited_id))
            if invite is not None:
                chunk.append(invite)
        chunk.extend(_presence(e) for e in answer.get("presence", {}).get("events", []))
        chunk.extend(answer.get("account_data", {}).get("events", []))
        return {"start": start.serialize(), "end": answer["next_batch"], "chunk": chunk}

    async def _peek(
        self, requester: Requester, room_id: RoomID, since: str | None, timeout_ms: int, limit: int
    ) -> JsonDict:
        """Events of one room after ``since``: a member's room, or any world-readable one."""
        await self._rooms.access(requester, room_id)  # M_FORBIDDEN unless it may be seen
        start = since if since is not None else (await self._now()).serialize()
        StreamToken.parse(start)  # M_INVALID_PARAM for a token that is none
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            now = await self._now()
            page = await self._rooms.messages(
                requester,
                room_id,
                from_token=start,
                to_token=now.serialize(),
                backwards=False,
                limit=limit,
                event_filter=EventFilter(),
            )
            remaining = deadline - time.monotonic()
            if page.chunk or remaining <= 0 or self._notifier.closing:
                end = page.end if page.end is not None else now.serialize()
                return {"start": start, "end": end, "chunk": [_v1(e) for e in page.chunk]}
            listener = self._notifier.listen(requester.user_id, [room_id])
            try:
                # A wake-up between the read and listen() is caught by the read after it.
                if (await self._now()).get(Stream.EVENTS) == now.get(Stream.EVENTS):
                    await listener.wait(remaining)
            finally:
                self._notifier.unlisten(listener, requester.user_id, [room_id])


def _with_room(event: Any, room_id: str) -> JsonDict:
    out = _v1(event)
    out["room_id"] = room_id
    return out


def _v1(event: Any) -> JsonDict:
    """An event as these old endpoints gave it: ``user_id`` beside ``sender`` (its name
    before r0, which clients of these endpoints read; Synapse gives it here too)."""
    out: JsonDict = dict(event)
    if "sender" in out:
        out["user_id"] = out["sender"]
    return out


def _presence(event: JsonDict) -> JsonDict:
    """A presence event as these old endpoints gave it: its user in ``content.user_id``
    (before r0 presence events had no ``sender``), ``status_msg`` always there."""
    content = {"status_msg": None, **event.get("content", {}), "user_id": event.get("sender")}
    return {**event, "content": content}


def _visibility(state: Iterable[JsonDict]) -> str:
    for event in state:
        if event.get("type") == "m.room.join_rules" and event.get("state_key") == "":
            if event.get("content", {}).get("join_rule") == "public":
                return "public"
    return "private"
