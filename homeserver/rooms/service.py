"""Sending into a room and reading it back: events, state, members, /messages, /context."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomAlias, RoomID, UserID
from homeserver.core.jsonutil import check_json_numbers
from homeserver.core.streams import RoomPosition
from homeserver.core.types import JsonDict, Requester
from homeserver.filters.matching import EventFilter
from homeserver.rooms.aggregations import Aggregations
from homeserver.rooms.sender import EventSender
from homeserver.rooms.serialize import client_event
from homeserver.rooms.visibility import Visibility
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.rooms import Membership, Room, RoomStore
from homeserver.sync.sources import IgnoredUsers

logger = logging.getLogger(__name__)

DEFAULT_MESSAGES_LIMIT = 10
# /messages backwards that reaches a gap in the room's history asks other servers for this
# many events before it, and waits this long at most (then serves what we hold).
BACKFILL_LIMIT = 100
BACKFILL_TIMEOUT_S = 30.0
MAX_MESSAGES_LIMIT = 1000
# Event types clients may not send through /send or /state: they go through their own APIs.
MEMBERSHIP = "m.room.member"


@dataclass(frozen=True, slots=True)
class Page:
    chunk: list[JsonDict]
    start: str
    end: str | None
    state: list[JsonDict]


class Backfiller(Protocol):
    """The room's history before some of its events, asked of the other servers in it and
    persisted (``federation.backfill.RoomBackfill``); returns how many events it took."""

    async def backfill(self, room_id: str, from_event_ids: Sequence[str], limit: int) -> int: ...


def position_token(position: int) -> str:
    """A stream token (a sync's ``prev_batch``): the room's timeline as it was at
    ``position`` of the events stream (``RoomPosition``)."""
    return RoomPosition.at_stream(position).serialize()


def event_token(event: StoredEvent, *, before: bool = False, cap: int | None = None) -> str:
    """A topological token: the gap just after ``event`` (``before``: just before it)."""
    stream = event.stream_ordering - 1 if before else event.stream_ordering
    return RoomPosition(event.depth, stream, cap).serialize()


@dataclass(frozen=True, slots=True)
class _Bounds:
    """One page's read of the timeline (``EventReads.get_timeline``'s bounds)."""

    below: tuple[int, int] | None = None
    above: tuple[int, int] | None = None
    after: int | None = None
    upto: int | None = None


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def page_bounds(
    start: RoomPosition, to: RoomPosition | None, backwards: bool, visible_upto: int | None
) -> _Bounds:
    """The bounds of /messages from ``start`` towards ``to`` (``RoomPosition`` says what
    each form means). ``visible_upto``: the user left at that stream position."""
    if backwards:
        below = start.topological
        upto = _min(start.cap, visible_upto)
        above = to.topological if to is not None else None
        after = to.stream if to is not None and to.depth is None else None
        return _Bounds(below=below, above=above, after=after, upto=upto)
    above = start.topological
    # Forwards from the room's start (stream position 0), backfilled history comes too.
    after = start.stream if start.depth is None and start.stream > 0 else None
    below = to.topological if to is not None else None
    upto = to.stream if to is not None and to.depth is None else None
    return _Bounds(below=below, above=above, after=after, upto=_min(upto, visible_upto))


async def read_timeline_page(
    events: EventStore,
    room_id: str,
    bounds: _Bounds,
    backwards: bool,
    limit: int,
    keep: Callable[[list[StoredEvent]], Awaitable[list[StoredEvent]]],
) -> tuple[list[StoredEvent], StoredEvent | None, bool]:
    """Up to ``limit`` events of the room's timeline within ``bounds`` that ``keep`` keeps,
    read in batches; the last event read and whether the timeline ran out before ``limit``.
    /messages and the admin API's room messages page alike."""
    chunk: list[StoredEvent] = []
    last: StoredEvent | None = None
    exhausted = False
    while len(chunk) < limit and not exhausted:
        want = limit - len(chunk)
        batch = await events.get_timeline(
            room_id,
            below=bounds.below,
            above=bounds.above,
            after=bounds.after,
            upto=bounds.upto,
            limit=want,
            descending=backwards,
        )
        if batch:
            last = batch[-1]
            # The next batch starts just past the last event read.
            if backwards:
                bounds = replace(bounds, below=(last.depth, last.stream_ordering - 1))
            else:
                bounds = replace(bounds, above=(last.depth, last.stream_ordering))
        exhausted = len(batch) < want
        chunk.extend(await keep(batch))
    return chunk, last, exhausted


class GuestAccounts(Protocol):
    """Which users are guests (the account store)."""

    async def guests_among(self, user_ids: list[str]) -> set[str]: ...


GUEST_ACCESS = "m.room.guest_access"
CANONICAL_ALIAS = "m.room.canonical_alias"


def _aliases_of(content: JsonDict) -> list[str]:
    alias = content.get("alias")
    alt = content.get("alt_aliases")
    out = [alias] if isinstance(alias, str) else []
    if isinstance(alt, list):
        out += [a for a in alt if isinstance(a, str)]
    return out


class RoomService:
    def __init__(
        self,
        sender: EventSender,
        events: EventStore,
        rooms: RoomStore,
        visibility: Visibility,
        clock: Clock,
        ignored: IgnoredUsers,
        aggregations: Aggregations,
        backfiller: Backfiller | None = None,
        guests: GuestAccounts | None = None,
        server_name: str | None = None,
    ) -> None:
        self._backfiller = backfiller
        self._guests = guests
        self._server_name = server_name
        self._sender = sender
        self._events = events
        self._rooms = rooms
        self._visibility = visibility
        self._clock = clock
        self._aggregations = aggregations
        # Whose events /messages hides from a user.
        self._ignored = ignored

    # --- sending state ----------------------------------------------------------------------

    async def set_state(
        self,
        requester: Requester,
        room_id: RoomID,
        event_type: str,
        state_key: str,
        content: JsonDict,
    ) -> str:
        requester.check_not_suspended()
        check_json_numbers(content, "content")
        if event_type == MEMBERSHIP:
            raise MatrixError(Codes.FORBIDDEN, "Use the membership endpoints for m.room.member")
        if event_type == "m.room.create":
            raise MatrixError(Codes.FORBIDDEN, "The create event cannot be replaced")
        await self.require_joined(requester.user_id, room_id)
        current = await self._events.get_current_state_event(room_id, event_type, state_key)
        if current is not None and current.content == content and current.redacted_by is None:
            # Same content: no new event (as current servers do, and clients rely on).
            return current.event_id
        if event_type == CANONICAL_ALIAS and state_key == "":
            await self._check_canonical_aliases(
                room_id, content, current.content if current is not None else {}
            )
        sent = await self._sender.send(
            room_id, requester.user_id, event_type, content, state_key=state_key
        )
        if (
            event_type == GUEST_ACCESS
            and state_key == ""
            and content.get("guest_access") != "can_join"
        ):
            await self._remove_guests(room_id)
        return sent.event_id

    async def _check_canonical_aliases(
        self, room_id: RoomID, content: JsonDict, current: JsonDict
    ) -> None:
        """spec (PUT /state, m.room.canonical_alias): the aliases it adds must be valid (400
        M_INVALID_PARAM) and point to this room (400 M_BAD_ALIAS); those already in the
        event are not checked again. Our own aliases are checked in the directory; other
        servers' only for form."""
        alias = content.get("alias")
        alt = content.get("alt_aliases", [])
        if alias is not None and not isinstance(alias, str):
            raise MatrixError(Codes.INVALID_PARAM, "alias must be a string")
        if not isinstance(alt, list) or not all(isinstance(a, str) for a in alt):
            raise MatrixError(Codes.INVALID_PARAM, "alt_aliases must be a list of strings")
        before = set(_aliases_of(current))
        for new in dict.fromkeys([*([alias] if alias is not None else []), *alt]):
            if new in before:
                continue
            try:
                parsed = RoomAlias.parse(new)
            except MatrixError:
                # spec: invalid syntax is M_INVALID_PARAM, a wrong target M_BAD_ALIAS.
                raise MatrixError(Codes.INVALID_PARAM, f"Invalid alias: {new}") from None
            if parsed.server_name == self._server_name:
                found = await self._rooms.get_alias(parsed)
                if found is None or found[0] != room_id:
                    raise MatrixError(
                        Codes.BAD_ALIAS, f"The alias {new} does not point to this room"
                    )

    async def _remove_guests(self, room_id: RoomID) -> None:
        """Guest access revoked: the guests in the room leave it (as Synapse makes them; the
        spec's guests may only be in rooms whose m.room.guest_access is can_join)."""
        if self._guests is None:
            return
        members = await self._rooms.get_room_members(room_id, ["join"])
        for guest in sorted(await self._guests.guests_among([m.user_id for m in members])):
            try:
                await self._sender.send(
                    room_id,
                    UserID(guest),
                    MEMBERSHIP,
                    {"membership": "leave"},
                    state_key=guest,
                )
            except MatrixError as e:
                # One guest's leave failing (the room changed meanwhile) stops no other.
                logger.warning("guest not removed", extra={"room_id": room_id, "reason": e.message})

    async def require_joined(self, user_id: UserID, room_id: RoomID) -> None:
        # A membership row exists only for a stored room: no separate room read on the
        # send path (the sender reads the room row itself, under its lock).
        m = await self._rooms.get_membership(room_id, user_id)
        if m is None or m.membership != "join":
            raise MatrixError(Codes.FORBIDDEN, "You are not joined to this room")

    # --- reading ---------------------------------------------------------------------------

    async def _access(
        self, user_id: str, room_id: str, *, allow_departed: bool = True
    ) -> tuple[Room, Membership | None]:
        """The room, and the user's membership; M_FORBIDDEN if they may see nothing in it.

        Members, and (``allow_departed``) users who left, who see the room as of their leave.
        An invitee is not a member yet: the invite's stripped state is all they get.
        """
        room = await self._rooms.get_room(room_id)
        if room is None:
            raise MatrixError(Codes.FORBIDDEN, "You are not in this room")
        m = await self._rooms.get_membership(room_id, user_id)
        allowed = ("join", "leave", "ban") if allow_departed else ("join",)
        if m is None or m.membership not in allowed:
            hv = await self._events.get_current_state_event(
                room_id, "m.room.history_visibility", ""
            )
            if hv is None or hv.content.get("history_visibility") != "world_readable":
                raise MatrixError(Codes.FORBIDDEN, "You are not in this room")
        return room, m

    def _upto(self, m: Membership | None) -> int | None:
        """Users who left see the room as it was when they left."""
        if m is not None and m.membership in ("leave", "ban"):
            return m.stream_ordering
        return None

    async def serialize(
        self,
        requester: Requester,
        events: Sequence[StoredEvent],
        room_version: str,
        *,
        with_room_id: bool = True,
        may_have_children: bool = True,
    ) -> list[JsonDict]:
        """Client events; ``may_have_children`` False: the caller knows that none of them has
        a child event, so there is nothing to bundle (and no need to look)."""
        redaction_ids = [e.redacted_by for e in events if e.redacted_by is not None]
        redactions = await self._events.get_events(redaction_ids) if redaction_ids else {}
        now = self._clock.now_ms()
        out = [
            client_event(
                e,
                now,
                room_version,
                requester=requester,
                redaction=redactions.get(e.redacted_by) if e.redacted_by else None,
                with_room_id=with_room_id,
            )
            for e in events
        ]
        if may_have_children:
            # spec: "Aggregations of child events"
            bundles = await self._aggregations.bundle(
                requester, events, room_version, with_room_id=with_room_id
            )
            for event, serialized in zip(events, out, strict=True):
                if event.event_id in bundles:
                    serialized["unsigned"]["m.relations"] = bundles[event.event_id]
        return out

    async def access(self, requester: Requester, room_id: RoomID) -> tuple[Room, Membership | None]:
        """The room and the requester's membership; M_FORBIDDEN if they may see nothing."""
        return await self._access(requester.user_id, room_id)

    async def visible_event(
        self, requester: Requester, room_id: RoomID, event_id: EventID
    ) -> tuple[Room, Membership | None, StoredEvent]:
        """An event of the room the requester may see: M_FORBIDDEN outside the room,
        M_NOT_FOUND for an unknown event or one hidden by history visibility."""
        room, m = await self._access(requester.user_id, room_id)
        event = await self._events.get_event(event_id)
        if (
            event is None
            or event.room_id != room_id
            or not await self._visibility.filter_events(requester.user_id, [event])
        ):
            raise MatrixError(Codes.NOT_FOUND, "Event not found")
        return room, m, event

    async def get_event(self, requester: Requester, room_id: RoomID, event_id: EventID) -> JsonDict:
        room, _ = await self._access(requester.user_id, room_id)
        event = await self._events.get_event(event_id)
        if event is None or event.room_id != room_id:
            raise MatrixError(Codes.NOT_FOUND, "Event not found")
        if not await self._visibility.filter_events(requester.user_id, [event]):
            raise MatrixError(Codes.NOT_FOUND, "Event not found")
        return (await self.serialize(requester, [event], room.room_version))[0]

    async def get_state(self, requester: Requester, room_id: RoomID) -> list[JsonDict]:
        room, m = await self._access(requester.user_id, room_id)
        upto = self._upto(m)
        if upto is None:
            state = await self._events.get_current_state_events(room_id)
        else:
            leave = await self._events.get_event(m.event_id) if m else None
            ids = await self._events.get_state_ids(leave.state_group) if leave else {}
            state = list((await self._events.get_events(ids.values())).values())
        return await self.serialize(requester, state, room.room_version)

    async def get_state_event(
        self, requester: Requester, room_id: RoomID, event_type: str, state_key: str
    ) -> StoredEvent:
        _, m = await self._access(requester.user_id, room_id)
        upto = self._upto(m)
        if upto is None:
            event = await self._events.get_current_state_event(room_id, event_type, state_key)
        else:
            leave = await self._events.get_event(m.event_id) if m else None
            ids = await self._events.get_state_ids(leave.state_group) if leave else {}
            found = ids.get((event_type, state_key))
            event = await self._events.get_event(found) if found else None
        if event is None:
            raise MatrixError(Codes.NOT_FOUND, "No such state event")
        return event

    async def state_content(
        self, requester: Requester, room_id: RoomID, event_type: str, state_key: str
    ) -> JsonDict:
        event = await self.get_state_event(requester, room_id, event_type, state_key)
        room = await self._rooms.get_room(room_id)
        assert room is not None
        content: JsonDict = (await self.serialize(requester, [event], room.room_version))[0][
            "content"
        ]
        return content

    async def members(
        self,
        requester: Requester,
        room_id: RoomID,
        *,
        at: str | None,
        membership: str | None,
        not_membership: str | None,
    ) -> list[JsonDict]:
        room, m = await self._access(requester.user_id, room_id)
        upto = self._upto(m)
        position = RoomPosition.parse(at) if at is not None else None
        if position is None and upto is None:
            events = [
                e
                for e in await self._events.get_current_state_events(room_id)
                if e.type == MEMBERSHIP
            ]
        else:
            # The state after the last event at the token: topologically last at or before
            # a topological token, last in the stream up to a stream token.
            if position is not None and position.topological is not None:
                latest = await self._events.get_timeline(
                    room_id, below=position.topological, upto=upto, limit=1, descending=True
                )
            else:
                stream = _min(position.stream if position is not None else None, upto)
                latest = await self._events.get_room_events(
                    room_id, upto=stream, limit=1, descending=True
                )
            events = []
            if latest:
                ids = await self._events.get_state_ids(latest[0].state_group)
                loaded = await self._events.get_events(
                    i for (t, _), i in ids.items() if t == MEMBERSHIP
                )
                events = list(loaded.values())
        events = [
            e
            for e in events
            if (membership is None or e.content.get("membership") == membership)
            and (not_membership is None or e.content.get("membership") != not_membership)
        ]
        events.sort(key=lambda e: e.state_key or "")
        return await self.serialize(requester, events, room.room_version)

    async def joined_members(self, requester: Requester, room_id: RoomID) -> JsonDict:
        # spec: "The current user must be in the room"; this is the current membership.
        await self._access(requester.user_id, room_id, allow_departed=False)
        members = await self._rooms.get_room_members(room_id, ["join"])
        out: JsonDict = {}
        for member in members:
            entry: JsonDict = {}
            if member.displayname is not None:
                entry["display_name"] = member.displayname
            if member.avatar_url is not None:
                entry["avatar_url"] = member.avatar_url
            out[member.user_id] = entry
        return out

    async def messages(
        self,
        requester: Requester,
        room_id: RoomID,
        *,
        from_token: str | None,
        to_token: str | None,
        backwards: bool,
        limit: int | None,
        event_filter: EventFilter,
    ) -> Page:
        room, m = await self._access(requester.user_id, room_id)
        limit = DEFAULT_MESSAGES_LIMIT if limit is None else max(0, min(limit, MAX_MESSAGES_LIMIT))
        if event_filter.limit is not None:
            limit = min(limit, event_filter.limit)
        visible_upto = self._upto(m)
        if from_token is not None:
            start = RoomPosition.parse(from_token)
        elif backwards:
            latest = await self._events.get_max_stream_ordering_before(room_id, 2**62)
            start = RoomPosition.at_stream(latest or 0)
        else:
            start = RoomPosition.at_stream(0)
        to = RoomPosition.parse(to_token) if to_token is not None else None
        bounds = page_bounds(start, to, backwards, visible_upto)
        read = await self._read_page(requester, room_id, bounds, backwards, limit, event_filter)
        if backwards and limit > 0 and await self._backfilled(room_id, read[1], read[2]):
            read = await self._read_page(requester, room_id, bounds, backwards, limit, event_filter)
        chunk, last, exhausted = read
        serialized = await self.serialize(requester, chunk, room.room_version)
        state: list[JsonDict] = []
        if event_filter.lazy_load_members and chunk:
            state = await self._member_events_for(requester, room, chunk)
        end: str | None = None
        if not exhausted and limit > 0:
            if last is None:  # nothing read: the page ends where it started
                end = start.serialize()
            elif backwards:
                # Backwards from a stream token, the events after it stay left out.
                end = event_token(last, before=True, cap=start.cap)
            else:
                end = event_token(last)
        return Page(serialized, from_token or start.serialize(), end, state)

    async def _backfilled(self, room_id: RoomID, last: StoredEvent | None, exhausted: bool) -> bool:
        """When a page backwards reached a gap in the room's history (a backward extremity
        named by an event at or above the page's lowest, or the page ran out while there are
        gaps), the history before it, asked of the other servers in the room: whether any
        was taken. A failure or a slow server is logged and the page served as it is."""
        if self._backfiller is None:
            return False
        gaps = await self._events.get_backward_extremity_depths(room_id)
        lowest = None if exhausted or last is None else last.depth
        reached = sorted(
            (e for e, depth in gaps.items() if lowest is None or depth >= lowest),
            key=lambda e: -gaps[e],
        )
        if not reached:
            return False
        try:
            async with asyncio.timeout(BACKFILL_TIMEOUT_S):
                taken = await self._backfiller.backfill(room_id, reached, BACKFILL_LIMIT)
        except Exception as e:  # noqa: BLE001 - never fail /messages for another server
            logger.warning("backfill failed", extra={"room_id": room_id, "error": repr(e)})
            return False
        return taken > 0

    async def _read_page(
        self,
        requester: Requester,
        room_id: RoomID,
        bounds: _Bounds,
        backwards: bool,
        limit: int,
        event_filter: EventFilter,
    ) -> tuple[list[StoredEvent], StoredEvent | None, bool]:
        """The page's events the user may see, the last event read and whether the
        timeline ran out before ``limit``."""
        ignored = await self._ignored.ignored_users(requester.user_id)

        async def keep(batch: list[StoredEvent]) -> list[StoredEvent]:
            allowed = [
                e
                for e in batch
                if event_filter.allows(e) and (e.sender not in ignored or e.state_key is not None)
            ]
            return await self._visibility.filter_events(requester.user_id, allowed)

        return await read_timeline_page(self._events, room_id, bounds, backwards, limit, keep)

    async def _member_events_for(
        self, requester: Requester, room: Room, events: Sequence[StoredEvent]
    ) -> list[JsonDict]:
        """Lazy-loading: the member events of the senders, as of the events' state."""
        wanted: dict[str, str] = {}
        for event in events:
            if event.sender in wanted:
                continue
            state = await self._events.get_state_ids(event.state_group)
            member_id = state.get((MEMBERSHIP, event.sender))
            if member_id is not None:
                wanted[event.sender] = member_id
        loaded = await self._events.get_events(wanted.values())
        return await self.serialize(requester, list(loaded.values()), room.room_version)

    async def context(
        self,
        requester: Requester,
        room_id: RoomID,
        event_id: EventID,
        limit: int,
        event_filter: EventFilter,
    ) -> JsonDict:
        room, m = await self._access(requester.user_id, room_id)
        event = await self._events.get_event(event_id)
        if (
            event is None
            or event.room_id != room_id
            or not await self._visibility.filter_events(requester.user_id, [event])
        ):
            raise MatrixError(Codes.NOT_FOUND, "Event not found")
        before_n = limit // 2
        after_n = limit - before_n
        upto = self._upto(m)
        # Around the event in topological order, as /messages pages from the tokens given.
        before = await self._events.get_timeline(
            room_id,
            below=(event.depth, event.stream_ordering - 1),
            upto=upto,
            limit=before_n,
            descending=True,
        )
        after = await self._events.get_timeline(
            room_id,
            above=(event.depth, event.stream_ordering),
            upto=upto,
            limit=after_n,
            descending=False,
        )
        first_before = before[-1] if before else event
        last_after = after[-1] if after else event
        before = await self._visibility.filter_events(
            requester.user_id, [e for e in before if event_filter.allows(e)]
        )
        after = await self._visibility.filter_events(
            requester.user_id, [e for e in after if event_filter.allows(e)]
        )
        last = after[-1] if after else event
        state_ids = await self._events.get_state_ids(last.state_group)
        if event_filter.lazy_load_members:
            senders = {e.sender for e in (*before, event, *after)}
            state_ids = {
                k: v for k, v in state_ids.items() if k[0] != MEMBERSHIP or k[1] in senders
            }
        state = list((await self._events.get_events(state_ids.values())).values())
        return {
            "event": (await self.serialize(requester, [event], room.room_version))[0],
            "events_before": await self.serialize(requester, before, room.room_version),
            "events_after": await self.serialize(requester, after, room.room_version),
            "state": await self.serialize(requester, state, room.room_version),
            "start": event_token(first_before, before=True),
            "end": event_token(last_after),
        }

    async def room_version(self, room_id: RoomID) -> str:
        version = await self._rooms.get_room_version(room_id)
        if version is None:
            raise MatrixError(Codes.NOT_FOUND, "Unknown room")
        return version
