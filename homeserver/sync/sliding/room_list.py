"""The rooms of a sliding sync: which memberships count, list filters, order, windows."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cachetools import LRUCache

from homeserver.core import jsonutil
from homeserver.core.ids import UserID
from homeserver.storage.events import EventStore
from homeserver.storage.rooms import RoomStore
from homeserver.storage.sliding_sync import BUMP_EVENT_TYPES, RoomListEntry, SlidingSyncStore
from homeserver.sync.sliding.names import RoomNames
from homeserver.sync.sliding.params import ListFilters, ListParams
from homeserver.sync.sliding.state import RoomStatus

CREATE = "m.room.create"
ENCRYPTION = "m.room.encryption"
SPACE_CHILD = "m.space.child"
# MSC4186: rooms the user is in or may enter; a room left since the client's position is
# listed once more, so that the client learns of the leave.
LISTED = ("join", "invite", "knock")
# Memberships kept, all users together (as RoomStore's for /sync): accounts in thousands of
# rooms cannot make a worker hold more than this many.
ROOM_LIST_ENTRIES_KEPT = 100_000
ROOM_FACTS_KEPT = 100_000
USERS_KEPT = 10_000  # users whose m.direct and tags are kept


class DirectRooms(Protocol):
    """The user's account data that lists read: ``m.direct`` and the room tags."""

    async def direct_room_ids(self, user_id: UserID) -> frozenset[str]: ...

    async def tag_names(self, user_id: UserID) -> dict[str, frozenset[str]]: ...


@dataclass(frozen=True, slots=True)
class RoomFacts:
    room_type: str | None
    encrypted: bool


@dataclass(frozen=True, slots=True)
class ListResult:
    count: int
    # (start, end, room IDs) of each requested range, in order.
    ranges: tuple[tuple[int, int, tuple[str, ...]], ...]

    @property
    def room_ids(self) -> set[str]:
        return {room_id for _, _, ids in self.ranges for room_id in ids}

    def to_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "ops": [
                {"op": "SYNC", "range": [start, end], "room_ids": list(ids)}
                for start, end, ids in self.ranges
            ],
        }


def bump_stamp(entry: RoomListEntry) -> int:
    """Where the room sorts: its latest bumping event while joined; else the membership
    event itself (an invitee must not learn of the room's activity)."""
    if entry.membership == "join" and entry.bump_stamp is not None:
        return entry.bump_stamp
    return entry.stream_ordering


def candidates(
    entries: Sequence[RoomListEntry],
    upto: int,
    after: int | None,
    sent: Mapping[str, RoomStatus],
    ignored: frozenset[str] = frozenset(),
    blocks_invites: bool = False,
) -> list[RoomListEntry]:
    """The memberships that list a room, newest activity first (spec, ignoring users: no
    invites from them; invite permission: none for a user who blocks invites)."""
    found = []
    for e in entries:
        if e.stream_ordering > upto:
            continue  # committed after this response's position: the next one carries it
        if e.membership == "invite" and (blocks_invites or e.sender in ignored):
            continue
        if e.membership in LISTED or (
            after is not None
            and e.stream_ordering > after
            and e.room_id in sent
            and not e.forgotten
        ):
            found.append(e)
    found.sort(key=lambda e: (-bump_stamp(e), e.room_id))
    return found


class RoomListCache:
    """Each user's room list as of an events position, kept by this worker: a later request
    reads it again only when the user's memberships moved in between (the events stream's
    shared window tells), else only the bump stamps of the rooms that had events."""

    def __init__(self, store: SlidingSyncStore, events: EventStore) -> None:
        self._store = store
        self._events = events
        self._kept: LRUCache[str, tuple[int, tuple[RoomListEntry, ...]]] = LRUCache(
            maxsize=ROOM_LIST_ENTRIES_KEPT, getsizeof=lambda kept: len(kept[1]) + 1
        )

    async def get(self, user_id: str, upto: int) -> tuple[RoomListEntry, ...]:
        kept = self._kept.get(user_id)
        if kept is not None and kept[0] <= upto:
            position, entries = kept
            if position == upto:
                return entries
            window = await self._events.get_window(position, upto)
            if window is not None and user_id not in window.members:
                moved = [e.room_id for e in entries if e.room_id in window.rooms]
                if moved:
                    stamps = (
                        _window_bump_stamps(window.rows, moved)
                        if window.rows is not None
                        else await self._store.get_bump_stamps(user_id, moved, upto)
                    )
                    entries = tuple(
                        replace(e, bump_stamp=stamps[e.room_id]) if e.room_id in stamps else e
                        for e in entries
                    )
                self._keep(user_id, upto, entries)
                return entries
        # Read after ``upto`` was committed: it holds every change up to there.
        entries = tuple(await self._store.get_room_list(user_id, upto))
        self._keep(user_id, upto, entries)
        return entries

    def _keep(self, user_id: str, upto: int, entries: tuple[RoomListEntry, ...]) -> None:
        if len(entries) < ROOM_LIST_ENTRIES_KEPT:  # the cache refuses what exceeds it whole
            self._kept[user_id] = (upto, entries)


def _window_bump_stamps(rows: Sequence[Any], room_ids: Sequence[str]) -> dict[str, int | None]:
    """The newest bumping event of each room among a short window's rows (oldest first),
    for the rooms that have one there: the others' stamps did not move."""
    wanted = set(room_ids)
    stamps: dict[str, int | None] = {}
    for r in rows:
        if r.room_id in wanted and r.type in BUMP_EVENT_TYPES:
            stamps[r.room_id] = int(r.stream_ordering)
    return stamps


class RoomFactsCache:
    """Room types never change (the create event's), and encryption, once on, stays on:
    both are kept; a room not yet encrypted is read again when a filter asks."""

    def __init__(self, rooms: RoomStore) -> None:
        self._rooms = rooms
        self._kept: LRUCache[str, RoomFacts] = LRUCache(maxsize=ROOM_FACTS_KEPT)

    async def get(self, room_ids: Sequence[str], *, encryption: bool) -> dict[str, RoomFacts]:
        out: dict[str, RoomFacts] = {}
        missing = []
        for room_id in room_ids:
            kept = self._kept.get(room_id)
            if kept is None or (encryption and not kept.encrypted):
                missing.append(room_id)
            else:
                out[room_id] = kept
        if missing:
            state = await self._rooms.get_current_state_contents(missing, (CREATE, ENCRYPTION))
            for room_id in missing:
                found = state.get(room_id, {})
                if CREATE not in found:
                    continue  # a room whose state this server lacks: no facts, no filter
                create = jsonutil.loads(found[CREATE])
                content = create.get("content") if isinstance(create, dict) else None
                room_type = content.get("type") if isinstance(content, dict) else None
                facts = RoomFacts(
                    room_type if isinstance(room_type, str) else None, ENCRYPTION in found
                )
                out[room_id] = self._kept[room_id] = facts
        return out


class RoomLists:
    def __init__(
        self, events: EventStore, rooms: RoomStore, names: RoomNames, direct: DirectRooms
    ) -> None:
        self._events = events
        self._rooms = rooms
        self._direct = direct
        self._names = names
        self._facts = RoomFactsCache(rooms)
        # user -> (account-data position it was read at, value): read again only once the
        # account-data stream moved (any user's write moves it, on any worker).
        self._direct_kept: LRUCache[str, tuple[int, frozenset[str]]] = LRUCache(USERS_KEPT)
        self._tags_kept: LRUCache[str, tuple[int, dict[str, frozenset[str]]]] = LRUCache(USERS_KEPT)

    async def _direct_ids(self, user_id: UserID, account_data: int) -> frozenset[str]:
        kept = self._direct_kept.get(user_id)
        if kept is not None and kept[0] == account_data:
            return kept[1]
        found = await self._direct.direct_room_ids(user_id)
        self._direct_kept[user_id] = (account_data, found)
        return found

    async def _tag_names(self, user_id: UserID, account_data: int) -> dict[str, frozenset[str]]:
        kept = self._tags_kept.get(user_id)
        if kept is not None and kept[0] == account_data:
            return kept[1]
        found = await self._direct.tag_names(user_id)
        self._tags_kept[user_id] = (account_data, found)
        return found

    async def compute(
        self,
        user_id: UserID,
        lists: Mapping[str, ListParams],
        listed: Sequence[RoomListEntry],
        account_data: int,
    ) -> dict[str, ListResult]:
        """``account_data``: the response's account-data position."""
        if not lists:
            return {}
        filters = [p.filters for p in lists.values()]
        direct: frozenset[str] = frozenset()
        if any(f.is_dm is not None for f in filters):
            direct = await self.is_direct(user_id, listed, account_data)
        facts: dict[str, RoomFacts] = {}
        if any(f.needs_room_facts for f in filters):
            facts = await self._facts.get(
                [e.room_id for e in listed],
                encryption=any(f.is_encrypted is not None for f in filters),
            )
        # Read at each request: a tag set or removed moves the room into or out of a list
        # at the next response.
        tags = (
            await self._tag_names(user_id, account_data)
            if any(f.needs_tags for f in filters)
            else {}
        )
        names: dict[str, str] = {}
        if any(f.room_name_like is not None for f in filters):
            names = await self._names.names(user_id, listed)
        out = {}
        for name, params in lists.items():
            f = params.filters
            children = (
                await self._space_children(f.spaces, listed) if f.spaces is not None else None
            )
            if f == NO_FILTERS:
                rooms = [e.room_id for e in listed]  # the common case, without a test a room
            else:
                like = f.room_name_like.casefold() if f.room_name_like is not None else None
                rooms = [
                    e.room_id
                    for e in listed
                    if _allows(f, e, direct, facts.get(e.room_id), children)
                    and (not f.needs_tags or _tagged(f, tags.get(e.room_id, frozenset())))
                    and (like is None or like in names.get(e.room_id, "").casefold())
                ]
            ranges: list[tuple[int, int, tuple[str, ...]]] = []
            for start, end in (
                params.ranges if params.ranges is not None else ((0, len(rooms) - 1),)
            ):
                if start < len(rooms) and end >= start:
                    ranges.append((start, min(end, len(rooms) - 1), tuple(rooms[start : end + 1])))
            out[name] = ListResult(len(rooms), tuple(ranges))
        return out

    async def is_direct(
        self, user_id: UserID, entries: Collection[RoomListEntry], account_data: int
    ) -> frozenset[str]:
        """Which of the rooms are direct chats: in ``m.direct``, or invited to as one."""
        return await self._direct_ids(user_id, account_data) | await self._invited_direct(entries)

    async def _invited_direct(self, entries: Collection[RoomListEntry]) -> frozenset[str]:
        invites = [e.event_id for e in entries if e.membership == "invite"]
        if not invites:
            return frozenset()
        loaded = await self._events.get_events(invites)
        return frozenset(e.room_id for e in loaded.values() if e.content.get("is_direct") is True)

    async def _space_children(
        self, spaces: frozenset[str], listed: Sequence[RoomListEntry]
    ) -> frozenset[str]:
        """MSC4186: the rooms that joined spaces name in ``m.space.child`` events with a
        ``via`` (no walk into sub-spaces); spaces the user is not in are ignored."""
        joined = {e.room_id for e in listed if e.membership == "join"}
        children: set[str] = set()
        for space_id in spaces & joined:
            ids = await self._events.get_current_state_ids(space_id, (SPACE_CHILD,))
            loaded = await self._events.get_events(ids.values())
            children.update(
                e.state_key
                for e in loaded.values()
                if e.state_key and isinstance(e.content.get("via"), list) and e.content["via"]
            )
        return frozenset(children)


NO_FILTERS = ListFilters()


def _tagged(f: ListFilters, tags: frozenset[str]) -> bool:
    """Synapse's rule: with ``tags``, one of them; with ``not_tags``, none of them."""
    if f.tags is not None and not tags & f.tags:
        return False
    return not (f.not_tags is not None and tags & f.not_tags)


def _allows(
    f: ListFilters,
    e: RoomListEntry,
    direct: frozenset[str],
    facts: RoomFacts | None,
    children: frozenset[str] | None,
) -> bool:
    if f.is_invite is not None and (e.membership == "invite") != f.is_invite:
        return False
    if f.is_dm is not None and (e.room_id in direct) != f.is_dm:
        return False
    if children is not None and e.room_id not in children:
        return False
    if facts is not None:
        if f.is_encrypted is not None and facts.encrypted != f.is_encrypted:
            return False
        if f.room_types is not None and facts.room_type not in f.room_types:
            return False
        if f.not_room_types is not None and facts.room_type in f.not_room_types:
            return False
    return True
