"""The event of a room nearest a point in time (GET /rooms/{roomId}/timestamp_to_event)."""

from __future__ import annotations

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.service import RoomService
from homeserver.rooms.visibility import Visibility
from homeserver.storage.event_times import EventTimeStore
from homeserver.storage.events import EventStore

# How many of the nearest events are read at once to find one the user may see.
_CANDIDATES = 20


class TimestampService:
    def __init__(
        self,
        times: EventTimeStore,
        events: EventStore,
        rooms: RoomService,
        visibility: Visibility,
    ) -> None:
        self._times = times
        self._events = events
        self._rooms = rooms
        self._visibility = visibility

    async def closest_event(
        self, requester: Requester, room_id: RoomID, ts: int, forwards: bool
    ) -> JsonDict:
        """The nearest event at or after ``ts`` (``forwards``) or at or before it that the
        requester may see; M_FORBIDDEN outside the room, M_NOT_FOUND if there is none."""
        _, membership = await self._rooms.access(requester, room_id)
        candidates = await self._times.closest_events(room_id, ts, forwards, _CANDIDATES)
        stored = await self._events.get_events([c[0] for c in candidates])
        ordered = [stored[c[0]] for c in candidates if c[0] in stored]
        visible = await self._visibility.filter_events(requester.user_id, ordered, membership)
        if not visible:
            direction = "after" if forwards else "before"
            raise MatrixError(Codes.NOT_FOUND, f"No event found {direction} {ts}")
        event = visible[0]
        return {"event_id": event.event_id, "origin_server_ts": event.origin_server_ts}
