"""Room summaries (MSC3266, spec v1.15 GET /room_summary): what a room is, for a client
that may not be in it yet (a link preview, Element Call joining a call room)."""

from __future__ import annotations

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.types import JsonDict
from homeserver.rooms.directory import DirectoryService
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.rooms import RoomStore

_CREATE = "m.room.create"
_JOIN_RULES = "m.room.join_rules"
_HISTORY = "m.room.history_visibility"
_TYPES = (
    _CREATE,
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    _JOIN_RULES,
    _HISTORY,
    "m.room.guest_access",
    "m.room.encryption",
)
# Join rules under which anyone may look at the room before joining (spec: room summary).
_OPEN_RULES = ("public", "knock", "knock_restricted")
_RESTRICTED_RULES = ("restricted", "knock_restricted")


class RoomSummaryService:
    def __init__(self, events: EventStore, rooms: RoomStore, directory: DirectoryService) -> None:
        self._events = events
        self._rooms = rooms
        self._directory = directory

    async def summary(
        self, user_id: UserID | None, room_id_or_alias: str, *, check_access: bool = True
    ) -> JsonDict:
        """The summary, for ``user_id`` (None: an unauthenticated request). A room the user
        may not see is "not found", as an unknown one is: its existence is not revealed.
        ``check_access=False``: for a caller that judges access itself (the space
        hierarchy, for another server)."""
        room_id = await self._directory.resolve_room(room_id_or_alias)
        room = await self._rooms.get_room(room_id)
        if room is None:
            raise MatrixError(Codes.NOT_FOUND, "Room not found")
        ids = await self._events.get_current_state_ids(room_id, _TYPES)
        loaded = await self._events.get_events(i for (_, key), i in ids.items() if key == "")
        state = {e.type: e for e in loaded.values()}
        membership = (
            await self._rooms.get_membership(room_id, user_id) if user_id is not None else None
        )
        join_rule = _text(state.get(_JOIN_RULES), "join_rule") or "invite"
        history = _text(state.get(_HISTORY), "history_visibility") or "shared"
        allowed = _allowed_rooms(state.get(_JOIN_RULES)) if join_rule in _RESTRICTED_RULES else []
        if check_access and not (
            join_rule in _OPEN_RULES
            or history == "world_readable"
            or (membership is not None and membership.membership in ("join", "invite"))
            or (user_id is not None and await self._in_any(user_id, allowed))
        ):
            raise MatrixError(Codes.NOT_FOUND, "Room not found")
        counts = await self._rooms.count_memberships(room_id)
        out: JsonDict = {
            "room_id": room_id,
            "num_joined_members": counts.get("join", 0),
            "world_readable": history == "world_readable",
            "guest_can_join": _text(state.get("m.room.guest_access"), "guest_access") == "can_join",
            "join_rule": join_rule,
            "room_version": room.room_version,
        }
        for key, event_type, field in (
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("avatar_url", "m.room.avatar", "url"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("room_type", _CREATE, "type"),
            ("encryption", "m.room.encryption", "algorithm"),
        ):
            value = _text(state.get(event_type), field)
            if value:
                out[key] = value
        if allowed:
            out["allowed_room_ids"] = allowed
        if user_id is not None:
            out["membership"] = membership.membership if membership is not None else "leave"
        return out

    async def _in_any(self, user_id: str, room_ids: list[str]) -> bool:
        for room_id in room_ids:
            m = await self._rooms.get_membership(room_id, user_id)
            if m is not None and m.membership == "join":
                return True
        return False


def _text(event: StoredEvent | None, field: str) -> str | None:
    value = event.content.get(field) if event is not None else None
    return value if isinstance(value, str) else None


def _allowed_rooms(event: StoredEvent | None) -> list[str]:
    """The rooms whose members may join a restricted room (its join rule's ``allow``)."""
    allow = event.content.get("allow") if event is not None else None
    if not isinstance(allow, list):
        return []
    return [
        a["room_id"]
        for a in allow
        if isinstance(a, dict)
        and a.get("type") == "m.room_membership"
        and isinstance(a.get("room_id"), str)
    ]
