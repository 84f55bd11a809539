"""The admin API on rooms (Synapse's ``/_synapse/admin/.../rooms``, issue 22): list with
search and ordering, details, members, state, messages, block, join a user, make a room
admin. Deleting rooms and redacting a user's events run in the background: room_tasks.py.

Every method takes the requester and refuses anyone but a server administrator first.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson

from homeserver.admin.users import require_admin
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.streams import RoomPosition
from homeserver.core.types import JsonDict, Requester
from homeserver.events.power_levels import get_send_level, get_user_power_level
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.filters.matching import EventFilter
from homeserver.rooms.directory import DirectoryService
from homeserver.rooms.membership import MembershipService
from homeserver.rooms.sender import EventSender
from homeserver.rooms.service import (
    Page,
    RoomService,
    event_token,
    page_bounds,
    read_timeline_page,
)
from homeserver.storage.admin import AdminStore
from homeserver.storage.admin_rooms import AdminRoomStore, RoomCounts, RoomListQuery
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.rooms import RoomStore

logger = logging.getLogger(__name__)

# The state the room list and details show, by event type (empty state keys).
SUMMARY_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.join_rules",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.tombstone",
)
# order_by of the room list: the ordering of AdminRoomStore.list_rooms; True: largest first
# (as Synapse). Rooms without the field go last (first, the other way round).
ROOM_ORDERS: dict[str, tuple[str, bool]] = {
    "name": ("name", False),
    "alphabetical": ("name", False),
    "canonical_alias": ("canonical_alias", False),
    "joined_members": ("joined_members", True),
    "size": ("joined_members", True),  # Synapse's older names
    "joined_local_members": ("joined_local_members", True),
    "version": ("version", True),
    "creator": ("creator", False),
    "encryption": ("encryption", False),
    "federatable": ("federatable", False),
    "public": ("public", False),
    "join_rules": ("join_rules", False),
    "guest_access": ("guest_access", False),
    "history_visibility": ("history_visibility", False),
    "state_events": ("state_events", True),
}


@dataclass(frozen=True, slots=True)
class RoomQuery:
    offset: int
    limit: int
    order_by: str = "name"
    backwards: bool = False
    search_term: str | None = None
    public_rooms: bool | None = None
    empty_rooms: bool | None = None


def _content(pdus: dict[str, Any], event_type: str) -> JsonDict:
    pdu = pdus.get(event_type)
    content = pdu.get("content") if isinstance(pdu, dict) else None
    return content if isinstance(content, dict) else {}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


class AdminRooms:
    def __init__(
        self,
        store: AdminRoomStore,
        admin_store: AdminStore,
        room_store: RoomStore,
        events: EventStore,
        rooms: RoomService,
        memberships: MembershipService,
        directory: DirectoryService,
        sender: EventSender,
        clock: Clock,
        server_name: str,
    ) -> None:
        self._store = store
        self._admin_store = admin_store
        self._room_store = room_store
        self._events = events
        self._rooms = rooms
        self._memberships = memberships
        self._directory = directory
        self._sender = sender
        self._clock = clock
        self._server_name = server_name

    # --- reading -----------------------------------------------------------------------------

    async def _entries(self, counts: list[RoomCounts]) -> list[JsonDict]:
        raw = await self._room_store.get_current_state_contents(
            [c.room_id for c in counts], SUMMARY_TYPES
        )
        out = []
        for c in counts:
            pdus = {t: _parse(j) for t, j in raw.get(c.room_id, {}).items()}
            create = _content(pdus, "m.room.create")
            out.append(
                {
                    "room_id": c.room_id,
                    "name": _str_or_none(_content(pdus, "m.room.name").get("name")),
                    "canonical_alias": _str_or_none(
                        _content(pdus, "m.room.canonical_alias").get("alias")
                    ),
                    "joined_members": c.joined_members,
                    "joined_local_members": c.joined_local_members,
                    "version": c.room_version,
                    "creator": c.creator,
                    "encryption": _str_or_none(
                        _content(pdus, "m.room.encryption").get("algorithm")
                    ),
                    "federatable": create.get("m.federate", True) is not False,
                    "public": c.is_public,
                    "join_rules": _str_or_none(
                        _content(pdus, "m.room.join_rules").get("join_rule")
                    ),
                    "guest_access": _str_or_none(
                        _content(pdus, "m.room.guest_access").get("guest_access")
                    ),
                    "history_visibility": _str_or_none(
                        _content(pdus, "m.room.history_visibility").get("history_visibility")
                    ),
                    "state_events": c.state_events,
                    "room_type": _str_or_none(create.get("type")),
                    "_state": pdus,
                }
            )
        return out

    async def list_rooms(self, requester: Requester, query: RoomQuery) -> JsonDict:
        """Rooms are filtered, ordered and paged in SQL (ties by room ID); the page's
        entries are then read from their state."""
        require_admin(requester)
        order_by, largest_first = ROOM_ORDERS[query.order_by]
        counts, total = await self._store.list_rooms(
            self._server_name,
            RoomListQuery(
                offset=query.offset,
                limit=query.limit,
                order_by=order_by,
                descending=largest_first != query.backwards,
                search_term=query.search_term,
                public_rooms=query.public_rooms,
                empty_rooms=query.empty_rooms,
            ),
        )
        page = await self._entries(counts)
        for e in page:
            e.pop("_state")
        out: JsonDict = {"rooms": page, "offset": query.offset, "total_rooms": total}
        if query.offset + len(page) < total:
            out["next_batch"] = query.offset + len(page)
        if query.offset > 0:
            out["prev_batch"] = max(0, query.offset - query.limit)
        return out

    async def _counts(self, room_id: RoomID) -> RoomCounts:
        found = await self._store.room_counts(self._server_name, room_id)
        if not found:
            raise MatrixError(Codes.NOT_FOUND, "Room not found")
        return found[0]

    async def room_details(self, requester: Requester, room_id: RoomID) -> JsonDict:
        require_admin(requester)
        entry = (await self._entries([await self._counts(room_id)]))[0]
        pdus = entry.pop("_state")
        members = await self._room_store.get_room_members(room_id)
        local = [m for m in members if UserID(m.user_id).server_name == self._server_name]
        tombstone = _content(pdus, "m.room.tombstone")
        entry.update(
            topic=_str_or_none(_content(pdus, "m.room.topic").get("topic")),
            avatar=_str_or_none(_content(pdus, "m.room.avatar").get("url")),
            forgotten=bool(local) and all(m.forgotten for m in local),
            tombstoned="m.room.tombstone" in pdus,
            replacement_room=_str_or_none(tombstone.get("replacement_room")),
        )
        return entry

    async def members(self, requester: Requester, room_id: RoomID) -> list[str]:
        require_admin(requester)
        await self._counts(room_id)
        return [m.user_id for m in await self._room_store.get_room_members(room_id, ["join"])]

    async def state(
        self, requester: Requester, room_id: RoomID, event_type: str | None
    ) -> list[JsonDict]:
        require_admin(requester)
        counts = await self._counts(room_id)
        state = await self._events.get_current_state_events(room_id)
        if event_type is not None:
            state = [e for e in state if e.type == event_type]
        state.sort(key=lambda e: (e.type, e.state_key or ""))
        return await self._rooms.serialize(requester, state, counts.room_version)

    async def messages(
        self,
        requester: Requester,
        room_id: RoomID,
        *,
        from_token: str | None,
        to_token: str | None,
        backwards: bool,
        limit: int,
        event_filter: EventFilter,
    ) -> Page:
        """Every event of the room in a range, as /messages pages them (in the room's
        order, backfilled history included, with the same tokens), but whoever could see
        them (an administrator reads the room's whole history)."""
        require_admin(requester)
        counts = await self._counts(room_id)
        if from_token is not None:
            start = RoomPosition.parse(from_token)
        elif backwards:
            latest = await self._events.get_max_stream_ordering_before(room_id, 2**62)
            start = RoomPosition.at_stream(latest or 0)
        else:
            start = RoomPosition.at_stream(0)
        to = RoomPosition.parse(to_token) if to_token is not None else None
        bounds = page_bounds(start, to, backwards, None)

        async def keep(batch: list[StoredEvent]) -> list[StoredEvent]:
            return [e for e in batch if event_filter.allows(e)]

        chunk, last, exhausted = await read_timeline_page(
            self._events, room_id, bounds, backwards, limit, keep
        )
        serialized = await self._rooms.serialize(requester, chunk, counts.room_version)
        end: str | None = None
        if not exhausted and limit > 0:
            if last is None:
                end = start.serialize()
            elif backwards:
                end = event_token(last, before=True, cap=start.cap)
            else:
                end = event_token(last)
        return Page(serialized, from_token or start.serialize(), end, [])

    async def fetch_event(self, requester: Requester, event_id: str) -> JsonDict:
        """An event as the server keeps it (its PDU), whoever could see it."""
        require_admin(requester)
        event = await self._events.get_event(event_id)
        if event is None:
            raise MatrixError(Codes.NOT_FOUND, "Event not found")
        return event.pdu

    # --- blocking, joining, power --------------------------------------------------------------

    async def set_block(self, requester: Requester, room_id: RoomID, block: bool) -> None:
        """A room may be blocked before this server knows it."""
        require_admin(requester)
        if block:
            await self._admin_store.block_room(room_id, requester.user_id, self._clock.now_ms())
        else:
            await self._admin_store.unblock_room(room_id)

    async def get_block(self, requester: Requester, room_id: RoomID) -> JsonDict:
        require_admin(requester)
        found = await self._admin_store.get_room_block(room_id)
        return {"block": False} if found is None else {"block": True, "user_id": found.user_id}

    async def join_user(
        self, requester: Requester, room_id_or_alias: str, user_id: UserID
    ) -> RoomID:
        """Join a local user to a room: a room they may not join by themselves is joined
        through an invite of the administrator's, who must be in it then (as Synapse)."""
        require_admin(requester)
        room_id = await self._directory.resolve_room(room_id_or_alias)
        await self._counts(room_id)
        if user_id.server_name != self._server_name:
            raise MatrixError(Codes.INVALID_PARAM, "Only local users can be joined to rooms")
        if await self._admin_store.get_user(user_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "User not found")
        if await self._join_rule(room_id) != "public":
            mine = await self._room_store.get_membership(room_id, requester.user_id)
            if mine is None or mine.membership != "join":
                raise MatrixError(
                    Codes.FORBIDDEN, "The room is not public and you are not in it to invite"
                )
            current = await self._room_store.get_membership(room_id, user_id)
            if current is None or current.membership not in ("join", "invite"):
                await self._memberships.invite(requester, room_id, user_id)
        await self._memberships.join(Requester(user_id, "", 0), room_id)
        return room_id

    async def _join_rule(self, room_id: str) -> str | None:
        event = await self._events.get_current_state_event(room_id, "m.room.join_rules", "")
        return None if event is None else _str_or_none(event.content.get("join_rule"))

    async def make_room_admin(
        self, requester: Requester, room_id_or_alias: str, user_id: UserID
    ) -> None:
        """Give ``user_id`` the highest power level in the room, through the local member
        who has the most power (as Synapse); invite them if they are not in it."""
        require_admin(requester)
        room_id = await self._directory.resolve_room(room_id_or_alias)
        await self._counts(room_id)
        if user_id.server_name != self._server_name:
            raise MatrixError(Codes.INVALID_PARAM, "Only local users can be made room admins")
        version = KNOWN_ROOM_VERSIONS[(await self._counts(room_id)).room_version]
        pl_event = await self._events.get_current_state_event(room_id, "m.room.power_levels", "")
        create = await self._events.get_current_state_event(room_id, "m.room.create", "")
        if pl_event is None or create is None:
            raise MatrixError(Codes.UNKNOWN, "The room has no power levels", status=400)
        content = dict(pl_event.content)
        joined = await self._room_store.get_room_members(room_id, ["join"])
        levels = {
            m.user_id: get_user_power_level(version, m.user_id, content, create.pdu)
            for m in joined
            if UserID(m.user_id).server_name == self._server_name
        }
        if not levels:
            raise MatrixError(Codes.FORBIDDEN, "No local user is in the room", status=400)
        acting = max(levels, key=lambda u: (levels[u], u))
        needed = get_send_level(version, "m.room.power_levels", True, content)
        if levels[acting] < needed:
            raise MatrixError(
                Codes.FORBIDDEN, "No local member has the power to change power levels", status=400
            )
        users = dict(content.get("users") or {})
        finite = [v for v in users.values() if isinstance(v, int)]
        # A room creator of room version 12 has infinite power: the user gets the highest
        # level anyone is given (100 at least); otherwise that of the acting member.
        granted = max([*finite, 100]) if levels[acting] == math.inf else int(levels[acting])
        users[str(user_id)] = granted
        content["users"] = users
        await self._sender.send(room_id, acting, "m.room.power_levels", content, state_key="")
        current = await self._room_store.get_membership(room_id, user_id)
        if current is None or current.membership not in ("join", "invite"):
            await self._memberships.invite(Requester(UserID(acting), "", 0), room_id, user_id)


def _parse(raw: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
