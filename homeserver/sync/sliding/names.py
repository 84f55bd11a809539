"""Room names as a client computes them, for the ``room_name_like`` list filter."""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.core import jsonutil
from homeserver.storage.events import EventStore
from homeserver.storage.rooms import RoomStore
from homeserver.storage.sliding_sync import RoomListEntry, SlidingSyncStore

NAME = "m.room.name"
CANONICAL_ALIAS = "m.room.canonical_alias"
MAX_HEROES = 5  # as /sync's m.heroes


class RoomNames:
    """The spec's display-name order (client-server API, "Calculating the display name
    for a room"): ``m.room.name``, else the canonical alias, else the heroes' names."""

    def __init__(self, events: EventStore, rooms: RoomStore, store: SlidingSyncStore) -> None:
        self._events = events
        self._rooms = rooms
        self._store = store

    async def names(self, user_id: str, entries: Sequence[RoomListEntry]) -> dict[str, str]:
        """Room ID -> the name the user sees. A room the user left is named as it was at
        the leave (a later rename is not theirs to see); an invite by its current name or
        alias (the stripped state an invitee gets), else its inviter."""
        out: dict[str, str] = {}
        current = [e.room_id for e in entries if e.membership in ("join", "invite", "knock")]
        contents = await self._rooms.get_current_state_contents(current, (NAME, CANONICAL_ALIAS))
        for entry in entries:
            if entry.membership in ("join", "invite", "knock"):
                found = contents.get(entry.room_id, {})
                name = _name_of(
                    *(_content(found.get(t)) for t in (NAME, CANONICAL_ALIAS)),
                )
            else:
                name = await self._name_at_leave(entry)
            if name is None:
                name = await self._hero_names(user_id, entry)
            out[entry.room_id] = name
        return out

    async def _name_at_leave(self, entry: RoomListEntry) -> str | None:
        leave = await self._events.get_event(entry.event_id)
        if leave is None:
            return None
        state = await self._events.get_state_ids(leave.state_group)
        ids = [state[k] for k in ((NAME, ""), (CANONICAL_ALIAS, "")) if k in state]
        loaded = await self._events.get_events(ids)
        by_type = {e.type: e.content for e in loaded.values()}
        return _name_of(by_type.get(NAME), by_type.get(CANONICAL_ALIAS))

    async def _hero_names(self, user_id: str, entry: RoomListEntry) -> str:
        if entry.membership in ("invite", "knock"):
            return entry.sender
        heroes = await self._store.get_heroes(entry.room_id, user_id, MAX_HEROES)
        return ", ".join(h.displayname or h.user_id for h in heroes)


def _content(event_json: str | None) -> dict[str, object] | None:
    if event_json is None:
        return None
    event = jsonutil.loads(event_json)
    content = event.get("content") if isinstance(event, dict) else None
    return content if isinstance(content, dict) else None


def _name_of(name: dict[str, object] | None, alias: dict[str, object] | None) -> str | None:
    value = name.get("name") if name is not None else None
    if isinstance(value, str) and value:
        return value
    value = alias.get("alias") if alias is not None else None
    if isinstance(value, str) and value:
        return value
    return None
