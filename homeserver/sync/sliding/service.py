"""Simplified sliding sync (MSC4186): computes a connection's response since its position,
and holds a long-poll until there is something to send."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from homeserver.core.clock import Clock
from homeserver.core.ids import UserID
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.membership import InvitePermissions
from homeserver.rooms.service import RoomService
from homeserver.rooms.visibility import Visibility
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.rooms import RoomStore
from homeserver.storage.sliding_sync import RoomListEntry, SlidingSyncStore
from homeserver.sync.sliding.extensions import ExtensionBuilder, ExtensionScope, ExtensionSources
from homeserver.sync.sliding.names import RoomNames
from homeserver.sync.sliding.params import RoomParams, SlidingSyncRequest
from homeserver.sync.sliding.room_list import (
    LISTED,
    DirectRooms,
    RoomListCache,
    RoomLists,
    candidates,
)
from homeserver.sync.sliding.rooms import RoomBuilder
from homeserver.sync.sliding.state import (
    EMPTY,
    EXPIRY_INTERVAL_S,
    Connections,
    ConnectionState,
    Position,
    RoomStatus,
)
from homeserver.sync.sources import IgnoredUsers, UnreadCounts
from homeserver.wakeups.notifier import Notifier

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Result:
    now: StreamToken
    response: JsonDict
    state: ConnectionState
    news: bool


class SlidingSyncService:
    def __init__(
        self,
        db: Database,
        store: SlidingSyncStore,
        events: EventStore,
        rooms: RoomStore,
        room_service: RoomService,
        visibility: Visibility,
        notifier: Notifier,
        clock: Clock,
        *,
        sources: ExtensionSources,
        unread: UnreadCounts,
        direct: DirectRooms,
        ignored: IgnoredUsers,
        invite_permissions: InvitePermissions | None = None,
    ) -> None:
        # spec v1.18, "Invite permission": a user who blocks invites is listed none.
        self._invite_permissions = invite_permissions
        self._db = db
        self._store = store
        self._events = events
        self._rooms = rooms
        self._notifier = notifier
        self._unread = unread
        self._ignored = ignored
        self._receipts = sources.receipts
        self._connections = Connections(store, clock)
        self._lists = RoomLists(events, rooms, RoomNames(events, rooms, store), direct)
        self._room_lists = RoomListCache(store, events)
        self._builder = RoomBuilder(events, rooms, store, room_service, visibility)
        self._extensions = ExtensionBuilder(sources)

    async def sync(
        self,
        requester: Requester,
        req: SlidingSyncRequest,
        pos: Position | None,
        timeout_ms: int,
    ) -> JsonDict:
        previous = EMPTY
        if pos is not None:
            previous = await self._connections.load(requester, req.conn_id, pos.connection)
        since = pos.token if pos is not None else None
        if since is None or timeout_ms <= 0:
            result = await self._compute(requester, req, since, previous)
        else:
            result = await self._wait(requester, req, since, previous, timeout_ms)
        used = pos.connection if pos is not None else None
        if used is not None and result.state == previous:
            connection = used  # nothing changed for the connection: its position stays
        else:
            connection = await self._connections.save(requester, req.conn_id, result.state, used)
        return {"pos": Position(connection, result.now).serialize(), **result.response}

    async def _wait(
        self,
        requester: Requester,
        req: SlidingSyncRequest,
        since: StreamToken,
        previous: ConnectionState,
        timeout_ms: int,
    ) -> _Result:
        """Computes until there is news or the time is up; no database connection is held
        while waiting (each computation takes its own)."""
        memberships = await self._rooms.get_user_memberships(requester.user_id, LISTED)
        room_ids = [m.room_id for m in memberships]
        # Listen before computing, so that a wake-up during the computation is not lost.
        listener = self._notifier.listen(requester.user_id, room_ids)
        try:
            deadline = time.monotonic() + timeout_ms / 1000
            while True:
                listener.clear()
                result = await self._compute(requester, req, since, previous)
                remaining = deadline - time.monotonic()
                if result.news or remaining <= 0:
                    return result
                if not await listener.wait(remaining):
                    return result
        finally:
            self._notifier.unlisten(listener, requester.user_id, room_ids)

    async def _compute(
        self,
        requester: Requester,
        req: SlidingSyncRequest,
        since: StreamToken | None,
        previous: ConnectionState,
    ) -> _Result:
        async with self._db.pinned_reads():  # one connection for the computation's reads
            positions = await self._db.current_positions()
            self._notifier.learn(positions)
            now = StreamToken(positions)
            return await self._compute_pinned(requester, req, since, previous, now)

    async def _compute_pinned(
        self,
        requester: Requester,
        req: SlidingSyncRequest,
        since: StreamToken | None,
        previous: ConnectionState,
        now: StreamToken,
    ) -> _Result:
        user_id = requester.user_id
        if since is not None:
            # Positions come from the database, so none of a real token is past them: a
            # larger one was made up, and reads as "up to now".
            since = StreamToken({s: min(since.get(s), now.get(s)) for s in Stream})
        upto = now.get(Stream.EVENTS)
        after = since.get(Stream.EVENTS) if since is not None else None
        entries = await self._room_lists.get(user_id, upto)
        ignored = await self._ignored.ignored_users(user_id)
        blocks_invites = (
            self._invite_permissions is not None
            and any(e.membership == "invite" for e in entries)
            and await self._invite_permissions.blocks_invites(user_id)
        )
        listed = candidates(entries, upto, after, previous.rooms, ignored, blocks_invites)
        by_id: dict[str, RoomListEntry] = {e.room_id: e for e in listed}
        account_data = now.get(Stream.ACCOUNT_DATA)
        lists = await self._lists.compute(user_id, req.lists, listed, account_data)

        params: dict[str, RoomParams] = {}
        for name, list_params in req.lists.items():
            for room_id in lists[name].room_ids:
                found = params.get(room_id)
                params[room_id] = found.union(list_params.room) if found else list_params.room
        subscribed: list[str] = []
        every: dict[str, RoomListEntry] = {e.room_id: e for e in entries}
        for room_id, room_params in req.room_subscriptions.items():
            entry = by_id.get(room_id) or _visible_left(every.get(room_id), upto)
            if entry is None:
                continue  # MSC4186: a room the user cannot see is left out, not an error
            by_id[room_id] = entry
            subscribed.append(room_id)
            found = params.get(room_id)
            params[room_id] = found.union(room_params) if found else room_params

        live = [room_id for room_id, s in previous.rooms.items() if s.live]
        changed = (
            await self._events.get_rooms_changed(live, after, upto) if after is not None else set()
        )
        direct = (
            await self._lists.is_direct(user_id, [by_id[r] for r in params], account_data)
            if params
            else frozenset()
        )
        if since is not None:
            # The user's own read receipt moved: the room's counts changed, send them.
            changed |= await self._read_moved(
                requester, [r for r in live if r in params], since, now
            )
        # Joined rooms sent from scratch (a first window, rooms scrolled into view): what they
        # need read for all of them at once.
        fresh = [
            (by_id[room_id], room_params)
            for room_id, room_params in params.items()
            if by_id[room_id].membership == "join"
            and _from_scratch(previous.rooms.get(room_id), by_id[room_id])
        ]
        loaded = await self._builder.prefetch(user_id, fresh, upto)
        rooms: JsonDict = {}
        state: dict[str, RoomStatus] = dict(previous.rooms)
        for room_id, room_params in params.items():
            update = await self._builder.build(
                requester,
                by_id[room_id],
                room_params,
                previous.rooms.get(room_id),
                after=after,
                upto=upto,
                changed=room_id in changed,
                is_dm=room_id in direct,
                ignored=ignored,
                loaded=loaded,
            )
            if update.entry is not None:
                rooms[room_id] = update.entry
            state[room_id] = update.status
        if after is not None:
            # Rooms the client had up to ``after`` and that moved outside every window: it
            # has them up to there only, and gets the rest when they come back into view.
            for room_id in changed - params.keys():
                status = state.get(room_id)
                if status is not None and status.live:
                    state[room_id] = replace(status, live=False, position=after)
            _forget_left(state, every, after, keep=subscribed)
        await self._add_counts(requester, rooms, by_id, now)

        scope = ExtensionScope(
            lists,
            subscribed,
            initial={
                r: frozenset(e["event_id"] for e in entry.get("timeline", ()))
                for r, entry in rooms.items()
                if entry.get("initial")
            },
            joined=[e.room_id for e in listed if e.membership == "join"],
        )
        extensions, news = await self._extensions.build(
            requester, req.extensions, since, now, scope
        )
        response: JsonDict = {
            "lists": {name: result.to_json() for name, result in lists.items()},
            "rooms": rooms,
            "extensions": extensions,
        }
        return _Result(now, response, ConnectionState(state), news or bool(rooms))

    async def _read_moved(
        self, requester: Requester, room_ids: list[str], since: StreamToken, now: StreamToken
    ) -> set[str]:
        if not room_ids or since.get(Stream.RECEIPTS) >= now.get(Stream.RECEIPTS):
            return set()
        found = await self._receipts.room_events(requester, room_ids, since, now)
        return {
            room_id
            for room_id, events in found.items()
            if any(
                requester.user_id in users
                for event in events
                for by_type in event.get("content", {}).values()
                for users in by_type.values()
            )
        }

    async def _add_counts(
        self,
        requester: Requester,
        rooms: JsonDict,
        by_id: dict[str, RoomListEntry],
        now: StreamToken,
    ) -> None:
        joined = [r for r in rooms if by_id[r].membership == "join"]
        counts = await self._unread.unread_counts(requester, joined, at=now) if joined else {}
        for room_id, entry in rooms.items():
            unread = counts.get(room_id, {}).get("unread_notifications", {})
            entry["notification_count"] = unread.get("notification_count", 0)
            entry["highlight_count"] = unread.get("highlight_count", 0)

    async def delete_for_devices(self, user_id: UserID, device_ids: list[str]) -> None:
        """Deleted devices take their connections with them."""
        await self._store.delete_connections(user_id, device_ids)

    async def run_expiry(self) -> None:
        """Background job: forgets the connections unused for too long; at shutdown, waits
        for the positions still being stored."""
        try:
            while True:
                await self._connections.expire_once()
                await asyncio.sleep(EXPIRY_INTERVAL_S)
        finally:
            # Stopping: the positions already answered are stored before the database goes.
            await asyncio.shield(self._connections.flush())


def _from_scratch(prev: RoomStatus | None, room: RoomListEntry) -> bool:
    """Whether ``RoomBuilder.build`` sends the room whole (as its ``initial``)."""
    return prev is None or (prev.membership != room.membership and room.membership in LISTED)


def _visible_left(entry: RoomListEntry | None, upto: int) -> RoomListEntry | None:
    """A subscription to a room the user left (not forgotten) shows it up to the leave."""
    if entry is None or entry.forgotten or entry.stream_ordering > upto:
        return None
    return entry if entry.membership in ("leave", "ban") else None


def _forget_left(
    state: dict[str, RoomStatus],
    every: dict[str, RoomListEntry],
    after: int,
    *,
    keep: Sequence[str],
) -> None:
    """Rooms left before the request's position, and not subscribed to, are no longer the
    connection's: keeps its state as small as the user's rooms."""
    for room_id in list(state):
        entry = every.get(room_id)
        if room_id in keep:
            continue
        if entry is None or (entry.membership not in LISTED and entry.stream_ordering <= after):
            del state[room_id]
