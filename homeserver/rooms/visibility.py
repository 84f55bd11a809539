"""Which events a user may see: history visibility at each event (spec: "History visibility")."""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.storage.events import EventStore, StateMap, StoredEvent
from homeserver.storage.rooms import Membership, RoomStore

HISTORY_VISIBILITY = "m.room.history_visibility"


class Visibility:
    def __init__(self, events: EventStore, rooms: RoomStore) -> None:
        self._events = events
        self._rooms = rooms

    async def filter_events(
        self, user_id: str, events: Sequence[StoredEvent], membership: Membership | None = None
    ) -> list[StoredEvent]:
        """The events ``user_id`` may see, in the same order.

        ``membership``: the user's current membership of the events' room, when the caller
        has it (one query fewer).
        """
        # Outliers, rejected and soft-failed events are never served (spec, "Rejected
        # events", "Soft failure").
        events = [e for e in events if e.served]
        if not events:
            return []
        # Memberships are read once per room: "shared" history opens to current members.
        current: dict[str, Membership | None] = {}
        if membership is not None:
            current[membership.room_id] = membership
        states: dict[int, StateMap] = {}
        wanted: set[str] = set()
        plans: list[tuple[StoredEvent, str | None, str | None]] = []
        for event in events:
            if event.room_id not in current:
                current[event.room_id] = await self._rooms.get_membership(event.room_id, user_id)
            m = current[event.room_id]
            if (
                m is not None
                and m.membership == "join"
                and event.stream_ordering > m.stream_ordering
            ):
                # Joined since before this event, and still: it was sent while they were in.
                plans.append((event, None, None))
                continue
            state = await self._state_at(event, states)
            hv_id = state.get((HISTORY_VISIBILITY, ""))
            member_id = state.get(("m.room.member", user_id))
            wanted.update(i for i in (hv_id, member_id) if i is not None)
            plans.append((event, hv_id, member_id))
        loaded = await self._events.get_events(wanted)
        visible = []
        for event, hv_id, member_id in plans:
            now = current[event.room_id]
            if (
                hv_id is None
                and member_id is None
                and now is not None
                and now.membership == "join"
                and event.stream_ordering > now.stream_ordering
            ):
                visible.append(event)
                continue
            hv = "shared"
            if hv_id in loaded:
                value = loaded[hv_id].content.get("history_visibility")
                hv = value if isinstance(value, str) else "shared"
            membership = None
            if member_id in loaded:
                membership = loaded[member_id].content.get("membership")
            now_membership = now.membership if now else None
            if _visible(event, user_id, hv, membership, now_membership):
                visible.append(event)
            elif event.type == HISTORY_VISIBILITY and event.state_key == "":
                # spec, history visibility: such an event is visible to whoever the setting
                # before or after it lets see it (the one that opens a room is seen).
                after = event.content.get("history_visibility")
                if isinstance(after, str) and _visible(
                    event, user_id, after, membership, now_membership
                ):
                    visible.append(event)
        return visible

    async def _state_at(self, event: StoredEvent, cache: dict[int, StateMap]) -> StateMap:
        # The visibility of a state event is judged by the state before it; the user's own
        # membership event is always visible to them (handled in _visible).
        if event.state_key is None:
            key = event.state_group
            if key not in cache:
                cache[key] = await self._events.get_state_ids(key)
            return cache[key]
        return await self._events.get_state_before(event)


def _visible(
    event: StoredEvent, user_id: str, hv: str, membership_then: object, membership_now: str | None
) -> bool:
    if event.type == "m.room.member" and event.state_key == user_id:
        return True
    if hv == "world_readable":
        return True
    if membership_then == "join":
        return True
    if hv == "shared" and membership_now == "join":
        return True
    if hv == "invited" and membership_then == "invite":
        return True
    if hv in ("shared", "invited") and membership_now == "join" and membership_then == "invite":
        return True
    return False
