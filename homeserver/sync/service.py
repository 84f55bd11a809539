"""Computes sync responses from storage, and holds long-polls until something arrives."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from homeserver.core.clock import Clock
from homeserver.core.ids import RoomID
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.events.stripped import STRIPPED_STATE_TYPES
from homeserver.filters.matching import EventFilter, SyncFilter, apply_event_fields
from homeserver.rooms.membership import InvitePermissions
from homeserver.rooms.service import RoomService, position_token
from homeserver.rooms.visibility import Visibility
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, StateMap, StoredEvent, StreamWindow
from homeserver.storage.rooms import Membership, RoomStore, content_field
from homeserver.sync.sources import (
    GlobalSource,
    IgnoredUsers,
    RoomSource,
    TopLevelSource,
    UnreadCounts,
)
from homeserver.wakeups.notifier import Notifier

MEMBER = "m.room.member"
MAX_HEROES = 5  # spec: "m.heroes": up to 5 members, for naming rooms without a name


@dataclass(frozen=True, slots=True)
class SyncRequest:
    since: StreamToken | None
    timeout_ms: int
    full_state: bool
    filter: SyncFilter
    # MSC4222 (spec v1.16 ``use_state_after``): the state up to the end of the timeline, in
    # ``state_after`` (or, asked under the unstable name, ``org.matrix.msc4222.state_after``).
    state_after: str | None = None


@dataclass(frozen=True, slots=True)
class _Initial:
    """What a sync from scratch read for all its joined rooms at once."""

    timelines: dict[str, list[StoredEvent]]  # newest first, timeline_limit + 1 of each
    counts: dict[str, dict[str, int]]
    parents: frozenset[str]  # those of the timelines' events that have a child


# Memberships a leave can end.
IN_ROOM = ("join", "invite", "knock")


class SyncService:
    def __init__(
        self,
        db: Database,
        events: EventStore,
        rooms: RoomStore,
        room_service: RoomService,
        visibility: Visibility,
        notifier: Notifier,
        clock: Clock,
        *,
        global_sources: Mapping[str, GlobalSource],
        room_sources: Mapping[str, RoomSource],
        extensions: Sequence[TopLevelSource],
        unread: UnreadCounts,
        ignored: IgnoredUsers,
        invite_permissions: InvitePermissions | None = None,
    ) -> None:
        # spec v1.18, "Invite permission": a user who blocks invites is served none.
        self._invite_permissions = invite_permissions
        # ``global_sources``: ``account_data``, ``presence``, ``to_device``; ``room_sources``:
        # ``ephemeral``, ``account_data``; ``extensions`` add top-level keys that are not event
        # lists (``device_lists``, key counts).
        self._global_sources = dict(global_sources)
        self._room_sources = dict(room_sources)
        self._extensions = list(extensions)
        self._unread = unread
        self._ignored = ignored
        self._db = db
        self._events = events
        self._rooms = rooms
        self._room_service = room_service
        self._visibility = visibility
        self._notifier = notifier
        self._clock = clock

    async def sync(self, requester: Requester, req: SyncRequest) -> JsonDict:
        if req.since is None or req.full_state or req.timeout_ms <= 0:
            return await self._compute(requester, req)
        if self._notifier.closing:  # shutting down: come back later (or to another worker)
            return {"next_batch": req.since.serialize()}
        # The committed positions known here (from wake-ups and earlier reads): coming back
        # with the token of the last response, a client finds them equal and waits, without
        # a statement. A position taken without a wake-up (a to-device message for no known
        # device) comes with the next wake-up or read: late, never skipped.
        known = self._notifier.committed()
        if known is None:
            known = await self._db.current_positions()
            self._notifier.learn(known)
        memberships = await self._rooms.get_sync_memberships(
            requester.user_id, known.get(Stream.EVENTS, 0)
        )
        room_ids = [m.room_id for m in memberships if m.membership in ("join", "invite")]
        # Listen before computing, so that a wake-up during the computation is not lost.
        listener = self._notifier.listen(requester.user_id, room_ids)
        try:
            deadline = time.monotonic() + req.timeout_ms / 1000
            now: StreamToken | None = None
            if StreamToken(known) == req.since:
                # No stream has moved past the token, so nothing can be new: wait for the first
                # wake-up before computing (one statement instead of a whole computation, for
                # every client coming back to wait after a response). A wake-up since listen()
                # is not lost: the listener stays set.
                await self._unread.prepare(
                    requester,
                    [m.room_id for m in memberships if m.membership == "join"],
                    req.since,
                )
                if not await listener.wait(deadline - time.monotonic()):
                    return await self._after_wait(requester, req, listener.closing)
                now = self._woken_at(known)
            while True:
                listener.clear()
                now, response = await self._compute_at(requester, req, now)
                remaining = deadline - time.monotonic()
                if not _is_empty(response) or remaining <= 0:
                    return response
                if not await listener.wait(remaining):
                    return await self._after_wait(requester, req, listener.closing)
                now = self._woken_at(now.positions)
        finally:
            self._notifier.unlisten(listener, requester.user_id, room_ids)

    async def _after_wait(self, requester: Requester, req: SyncRequest, closing: bool) -> JsonDict:
        """The answer of a long-poll whose wait ended without a wake-up: what came meanwhile
        (a lost wake-up costs latency, never an event); at shut-down, nothing, read nothing,
        and the same token back (the client resumes from it on another worker or later)."""
        if closing and req.since is not None:
            return {"next_batch": req.since.serialize()}
        return await self._compute(requester, req)

    def _woken_at(self, known: dict[Stream, int]) -> StreamToken:
        """Where a woken long-poll computes up to, without reading the positions again: the
        positions it knew, raised to the committed ones known now, among which the wake-up
        that woke it."""
        committed = self._notifier.committed() or {}
        return StreamToken({s: max(p, committed.get(s, 0)) for s, p in known.items()})

    async def _compute(self, requester: Requester, req: SyncRequest) -> JsonDict:
        return (await self._compute_at(requester, req, None))[1]

    async def _compute_at(
        self, requester: Requester, req: SyncRequest, now: StreamToken | None
    ) -> tuple[StreamToken, JsonDict]:
        """The response up to ``now`` (None: the current positions), and that token."""
        # An incremental sync keeps one connection for its dozen reads. A sync from scratch
        # (or of full state) takes one per read: between its reads it builds whole rooms,
        # and it must not keep a connection from the woken long-polls meanwhile.
        incremental = req.since is not None and not req.full_state
        async with self._db.pinned_reads() if incremental else contextlib.nullcontext():
            if now is None:
                positions = await self._db.current_positions()
                self._notifier.learn(positions)
                now = StreamToken(positions)
            return now, await self._compute_pinned(requester, req, now)

    async def _compute_pinned(
        self, requester: Requester, req: SyncRequest, now: StreamToken
    ) -> JsonDict:
        since = req.since
        upto = now.get(Stream.EVENTS)
        after = since.get(Stream.EVENTS) if since is not None else None
        memberships = [
            m
            for m in await self._rooms.get_sync_memberships(requester.user_id, upto)
            if req.filter.allows_room(m.room_id) and m.stream_ordering <= upto
        ]
        # A membership after our token is left for the next sync, which carries it.
        joined_ids = [m.room_id for m in memberships if m.membership == "join"]
        changed = (
            set(joined_ids)
            if after is None
            else await self._events.get_rooms_changed([m.room_id for m in memberships], after, upto)
        )
        # The events since the token, when few (woken syncs share it): whose got children.
        window = await self._events.get_window(after, upto) if after is not None else None
        # A sync from scratch reads the joined rooms' timelines, versions and member counts
        # in a few statements for all of them, not one each per room.
        initial: _Initial | None = None
        if after is None and joined_ids:
            limit = req.filter.timeline_limit + 1
            await self._rooms.load_room_versions(joined_ids)
            timelines = await self._events.get_latest_of_rooms(joined_ids, upto=upto, limit=limit)
            initial = _Initial(
                timelines,
                await self._rooms.count_memberships_of(joined_ids),
                frozenset(
                    await self._events.with_children(e for raw in timelines.values() for e in raw)
                ),
            )
        extras = await self._room_extras(requester, joined_ids, req, now)
        ignored = await self._ignored.ignored_users(requester.user_id)
        joined: JsonDict = {}
        invited: JsonDict = {}
        knocked: JsonDict = {}
        left: JsonDict = {}
        blocks_invites: bool | None = None  # read once, and only if there is an invite
        for m in memberships:
            membership_changed = after is None or m.stream_ordering > after
            if m.membership == "join":
                if req.full_state or m.room_id in changed or m.room_id in extras:
                    newly = (
                        after is not None
                        and membership_changed
                        and not await self._was_joined_before(m)
                    )
                    entry = await self._room_entry(
                        requester,
                        m,
                        after,
                        upto,
                        req,
                        ignored,
                        window,
                        full=after is None or req.full_state or newly,
                        initial=initial,
                    )
                    entry.update(extras.get(m.room_id, {}))
                    joined[m.room_id] = entry
            elif m.membership == "invite":
                if blocks_invites is None:
                    blocks_invites = (
                        self._invite_permissions is not None
                        and await self._invite_permissions.blocks_invites(requester.user_id)
                    )
                if membership_changed and m.sender not in ignored and not blocks_invites:
                    invited[m.room_id] = {"invite_state": {"events": await self._stripped_state(m)}}
            elif m.membership == "knock":  # spec: the knocker sees the room as an invitee does
                if membership_changed:
                    knocked[m.room_id] = {"knock_state": {"events": await self._stripped_state(m)}}
            elif m.membership in ("leave", "ban") and not m.forgotten:
                include = (
                    (req.filter.include_leave or req.full_state)
                    if after is None
                    else membership_changed
                )
                if include and await self._was_in_room(m):
                    left[m.room_id] = await self._room_entry(
                        requester,
                        m,
                        after,
                        m.stream_ordering,
                        req,
                        ignored,
                        window,
                        full=after is None or req.full_state,
                    )
        if joined:
            counts = await self._unread.unread_counts(
                requester,
                list(joined),
                threads=req.filter.timeline.unread_thread_notifications,
                at=now,
            )
            for room_id, entry in joined.items():
                entry.update(
                    counts.get(
                        room_id,
                        {"unread_notifications": {"notification_count": 0, "highlight_count": 0}},
                    )
                )
        rooms: JsonDict = {}
        for key, section in (
            ("join", joined),
            ("invite", invited),
            ("knock", knocked),
            ("leave", left),
        ):
            if section:
                rooms[key] = section
        response: JsonDict = {"next_batch": now.serialize()}
        if rooms:
            response["rooms"] = rooms
        for key, source in self._global_sources.items():
            events = await source.global_events(requester, since, now)
            allowed = [e for e in events if _global_filter(req.filter, key).allows_json(e)]
            if allowed:
                response[key] = {"events": allowed}
        for extension in self._extensions:
            response.update(await extension.top_level(requester, since, now))
        return response

    async def _room_extras(
        self, requester: Requester, room_ids: list[str], req: SyncRequest, now: StreamToken
    ) -> dict[str, JsonDict]:
        """Ephemeral events and room account data, by room: {room_id: {section: {...}}}."""
        extras: dict[str, JsonDict] = {}
        for key, source in self._room_sources.items():
            event_filter = (
                req.filter.ephemeral if key == "ephemeral" else req.filter.room_account_data
            )
            found = await source.room_events(requester, room_ids, req.since, now)
            for room_id, events in found.items():
                allowed = [e for e in events if event_filter.allows_json(e)]
                if allowed:
                    extras.setdefault(room_id, {})[key] = {"events": allowed}
        return extras

    async def _was_joined_before(self, m: Membership) -> bool:
        """Whether this join replaced a join (a profile change), not a new arrival."""
        event = await self._events.get_event(m.event_id)
        prev = event.unsigned.get("prev_content", {}) if event else {}
        return isinstance(prev, dict) and prev.get("membership") == "join"

    async def _was_in_room(self, m: Membership) -> bool:
        """A leave that follows a join, invite or knock: a rejected invite counts too. A
        leave row naming a join, invite or knock is one that state resolution dropped (no
        event of its own ended it): the user was in the room."""
        event = await self._events.get_event(m.event_id)
        if event is None:
            return False
        if m.membership == "leave" and event.content.get("membership") in IN_ROOM:
            return True
        prev = event.unsigned.get("prev_content", {})
        return isinstance(prev, dict) and prev.get("membership") in IN_ROOM

    async def _room_entry(
        self,
        requester: Requester,
        membership: Membership,
        after: int | None,
        upto: int,
        req: SyncRequest,
        ignored: frozenset[str],
        window: StreamWindow | None,
        *,
        full: bool,
        initial: _Initial | None = None,
    ) -> JsonDict:
        room_id = membership.room_id
        f = req.filter
        limit = f.timeline_limit
        if after is None and initial is not None and room_id in initial.timelines:
            raw = initial.timelines[room_id]
        elif after is None:
            raw = await self._events.get_room_events(
                room_id, upto=upto, limit=limit + 1, descending=True
            )
        else:
            raw = await self._events.get_recent_events(room_id, after, upto, limit + 1)
        limited = len(raw) > limit
        raw = list(reversed(raw[:limit]))
        timeline = await self._visibility.filter_events(
            requester.user_id,
            # spec, ignoring users: their state events are still sent, the rest is hidden.
            [
                e
                for e in raw
                if f.timeline.allows(e) and (e.sender not in ignored or e.state_key is not None)
            ],
            membership,
        )
        room_version = await self._room_service.room_version(RoomID(room_id))

        state_ids: StateMap = {}
        if req.state_after is not None:
            state_ids = await self._state_after_ids(
                room_id, raw, None if full else after, upto, limited
            )
        elif full or limited:
            start_state = await self._state_before_timeline(room_id, raw, upto)
            if full:
                state_ids = start_state
            else:
                assert after is not None
                since_state = await self._state_at_position(room_id, after)
                state_ids = {k: v for k, v in start_state.items() if since_state.get(k) != v}
        timeline_ids = {e.event_id for e in raw}
        if req.state_after is None:
            # Without state_after, the timeline's own state events are the client's to apply.
            state_ids = {k: v for k, v in state_ids.items() if v not in timeline_ids}
        if f.lazy_load_members:
            senders = {e.sender for e in timeline} | {requester.user_id}
            state_ids = {k: v for k, v in state_ids.items() if k[0] != MEMBER or k[1] in senders}
            if not full and req.state_after is None:
                state_ids.update(await self._members_of(room_id, raw, senders, state_ids))
            elif not full:
                state_ids.update(await self._members_after(room_id, raw, upto, senders, state_ids))
        loaded = await self._events.get_events(state_ids.values())
        state = [e for e in loaded.values() if f.state.allows(e)]

        prev_batch = position_token(raw[0].stream_ordering - 1) if raw else position_token(upto)
        entry: JsonDict = {
            "timeline": {
                "events": self._shape(
                    await self._room_service.serialize(
                        requester,
                        timeline,
                        room_version,
                        with_room_id=False,
                        # Its events lie in the window: a child of one would lie there too.
                        may_have_children=_may_have_children(timeline, window, initial),
                    ),
                    f,
                ),
                "limited": limited,
                "prev_batch": prev_batch,
            },
            req.state_after or "state": {
                "events": self._shape(
                    await self._room_service.serialize(
                        requester, state, room_version, with_room_id=False
                    ),
                    f,
                )
            },
        }
        # The summary (member counts, heroes) only changes with memberships: sent when the
        # client starts from scratch, lazy-loads members, or a membership changed.
        if full or f.lazy_load_members or any(e.type == MEMBER for e in raw):
            counts = initial.counts.get(room_id) if initial is not None else None
            entry["summary"] = await self._summary(requester.user_id, room_id, counts)
        return entry

    async def _state_after_ids(
        self,
        room_id: str,
        raw: Sequence[StoredEvent],
        after: int | None,
        upto: int,
        changed: bool,
    ) -> StateMap:
        """MSC4222: all state at the end of the timeline (``after`` None), or what differs
        there from the state at ``after``, timeline events included. ``changed`` False (no
        gap, no full state): only the timeline's own state events can differ."""
        end = (
            await self._events.get_state_ids(raw[-1].state_group)
            if raw
            else await self._state_at_position(room_id, upto)
        )
        if after is None:
            return end
        if not changed and not any(e.state_key is not None for e in raw):
            return {}
        before = await self._state_at_position(room_id, after)
        return {k: v for k, v in end.items() if before.get(k) != v}

    async def _members_after(
        self,
        room_id: str,
        raw: Sequence[StoredEvent],
        upto: int,
        senders: set[str],
        have: StateMap,
    ) -> StateMap:
        """Lazy-loading with state_after: the senders' member events at the timeline's end."""
        if not raw:
            return {}
        end = await self._events.get_state_ids(raw[-1].state_group)
        return {
            k: v for k, v in end.items() if k[0] == MEMBER and k[1] in senders and k not in have
        }

    def _shape(self, events: list[JsonDict], f: SyncFilter) -> list[JsonDict]:
        if f.event_fields is None:
            return events
        return [apply_event_fields(e, f.event_fields) for e in events]

    async def _members_of(
        self, room_id: str, raw: Sequence[StoredEvent], senders: set[str], have: StateMap
    ) -> StateMap:
        """Lazy-loading in an incremental sync: the senders' member events (redundantly)."""
        if not raw:
            return {}
        state = await self._state_before_timeline(room_id, raw, raw[-1].stream_ordering)
        return {
            k: v for k, v in state.items() if k[0] == MEMBER and k[1] in senders and k not in have
        }

    async def _state_before_timeline(
        self, room_id: str, raw: Sequence[StoredEvent], upto: int
    ) -> StateMap:
        if raw:
            return await self._events.get_state_before(raw[0])
        return await self._state_at_position(room_id, upto)

    async def _state_at_position(self, room_id: str, position: int) -> StateMap:
        last = await self._events.get_room_events(room_id, upto=position, limit=1, descending=True)
        if not last:
            return {}
        return await self._events.get_state_ids(last[0].state_group)

    async def _summary(
        self, user_id: str, room_id: str, counts: dict[str, int] | None = None
    ) -> JsonDict:
        if counts is None:
            counts = await self._rooms.count_memberships(room_id)
        summary: JsonDict = {
            "m.joined_member_count": counts.get("join", 0),
            "m.invited_member_count": counts.get("invite", 0),
        }
        # spec: heroes are "required if the room's m.room.name or m.room.canonical_alias
        # state events are unset or empty"; a room so named is not named by its members.
        state = (
            await self._rooms.get_current_state_contents(
                [room_id], ["m.room.name", "m.room.canonical_alias"]
            )
        ).get(room_id, {})
        name = content_field(state.get("m.room.name"), "name")
        if name is None and content_field(state.get("m.room.canonical_alias"), "alias") is None:
            summary["m.heroes"] = await self._rooms.get_heroes(room_id, user_id, MAX_HEROES)
        return summary

    async def _stripped_state(self, m: Membership) -> list[JsonDict]:
        state = await self._events.get_current_state_ids(m.room_id, STRIPPED_STATE_TYPES)
        ids = [i for (_, k), i in state.items() if k == ""] + [m.event_id]
        loaded = await self._events.get_events(ids)
        stripped = [
            {
                "type": e.type,
                "state_key": e.state_key or "",
                "sender": e.sender,
                "content": e.content,
            }
            for e in loaded.values()
        ]
        # An invite into (a knock on) another server's room: its state is what that server
        # sent.
        own = loaded.get(m.event_id)
        sent = None
        if own is not None and not state:
            sent = own.unsigned.get("invite_room_state", own.unsigned.get("knock_room_state"))
        if isinstance(sent, list):
            stripped = [e for e in sent if isinstance(e, dict)] + stripped
        return stripped


def _may_have_children(
    timeline: Sequence[StoredEvent], window: StreamWindow | None, initial: _Initial | None
) -> bool:
    """Whether a timeline may hold an event with a child (to bundle): known from the window
    (an incremental sync) or from the batched read (a sync from scratch); else perhaps."""
    parents = window.parents if window is not None else initial.parents if initial else None
    return parents is None or any(e.event_id in parents for e in timeline)


# Keys that every response may carry without being news: a long-poll keeps waiting.
_NOT_NEWS = frozenset(
    {"next_batch", "device_one_time_keys_count", "device_unused_fallback_key_types"}
)


def _is_empty(response: JsonDict) -> bool:
    return all(key in _NOT_NEWS for key in response)


def has_news(response: JsonDict) -> bool:
    """Whether a response carries anything new (the WebSocket transport sends only those)."""
    return not _is_empty(response)


def _global_filter(f: SyncFilter, key: str) -> EventFilter:
    if key == "account_data":
        return f.account_data
    if key == "presence":
        return f.presence
    return EventFilter()
