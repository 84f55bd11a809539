"""Device lists: who must refetch whose keys (spec: "Tracking the device list for a user").

A user's devices or keys change → one position on the device-lists stream for that user,
and a wake-up for everyone who shares a room with them. A sync (or /keys/changes) between
two tokens then lists in ``changed`` the users whose devices changed in that range and
with whom the requester shares a room, plus those with whom the requester newly shares a
room; in ``left`` those with whom the requester no longer shares any room.

"Shares a room" means any room both users are joined to, encrypted or not: the spec asks
for encrypted rooms, but a room may become encrypted later, and telling a client about a
user it does not track costs it nothing (clients ignore users they do not track).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from homeserver.core.ids import UserID
from homeserver.core.outbox import EduOutbox
from homeserver.core.streams import Stream, StreamToken
from homeserver.storage.device_lists import DeviceListStore
from homeserver.storage.events import EventStore
from homeserver.wakeups.notifier import Notifier


@dataclass(frozen=True, slots=True)
class DeviceListChanges:
    changed: list[str]
    left: list[str]


class DeviceListService:
    def __init__(
        self,
        store: DeviceListStore,
        notifier: Notifier,
        events: EventStore,
        *,
        server_name: str = "",
        outbox: EduOutbox | None = None,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._events = events
        self._server_name = server_name
        # Other servers sharing a room with our users are told (m.device_list_update).
        self._outbox = outbox

    async def mark_changed(
        self, user_id: UserID, device_ids: Sequence[str] = (), *, deleted: bool = False
    ) -> None:
        """The user's devices, device keys or cross-signing keys changed: ``device_ids``
        those devices (``deleted``: they are gone), none for the cross-signing keys.

        Each device takes a position of its own: it is the stream ID of the update other
        servers are sent about it."""
        peers = await self._store.users_sharing_room(user_id)
        for device_id in device_ids or (None,):
            position = await self._store.mark_changed(user_id)
            await self._notifier.notify(
                Stream.DEVICE_LISTS, position, user_ids=sorted(peers | {user_id})
            )
            if self._outbox is not None and user_id.server_name == self._server_name:
                await self._outbox.device_list_changed(
                    user_id, position, device_id, deleted=deleted
                )

    async def stream_id(self, user_id: UserID) -> int:
        """A number that grows with each change of the user's devices (federation
        /user/devices ``stream_id``): the position of the last change, 0 before any."""
        return await self._store.position_of(user_id) or 0

    async def changes(
        self, user_id: UserID, since: StreamToken, upto: StreamToken, *, committed: bool = False
    ) -> DeviceListChanges:
        """Between two sync tokens, as seen by ``user_id``. ``committed``: ``upto`` is a
        sync's current position, not a client's token, so the events in between may be
        looked up in the window every woken sync shares."""
        after_d, upto_d = since.get(Stream.DEVICE_LISTS), upto.get(Stream.DEVICE_LISTS)
        after_e, upto_e = since.get(Stream.EVENTS), upto.get(Stream.EVENTS)
        moved = await self._store.changed_between(after_d, upto_d) if after_d < upto_d else set()
        arrived: frozenset[str] = frozenset()
        departed: frozenset[str] = frozenset()
        if after_e < upto_e and committed:
            # Memberships change only through membership events: none in the range, nothing
            # to look up (a message to a big room wakes every member's sync).
            window = await self._events.get_window(after_e, upto_e)
            if window is not None and not window.members:
                after_e = upto_e
        if after_e < upto_e:
            members = await self._store.membership_changes(user_id, after_e, upto_e)
            arrived, departed = members.arrived, members.departed
        if not moved and not arrived and not departed:
            return DeviceListChanges([], [])
        # One's own devices count too: a client tracks its own user's other devices.
        shared = await self._store.users_sharing_room(user_id) | {user_id}
        changed = (moved | arrived) & shared
        left = departed - shared
        return DeviceListChanges(sorted(changed), sorted(left))
