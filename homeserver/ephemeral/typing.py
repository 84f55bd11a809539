"""Typing notifications (spec: typing notifications): ``m.typing`` ephemeral events.

Named so as not to shadow the standard library's ``typing``. Who types is kept in the
database, so every worker sees the same list; expiry is applied by one background job per
worker, which gives the room a new typing position so that syncs see the user stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.outbox import EduOutbox
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.rooms import RoomStore
from homeserver.storage.typing_notifications import TypingStore
from homeserver.wakeups.notifier import Notifier

DEFAULT_TIMEOUT_MS = 30_000  # clients that omit the timeout (Synapse's default too)
# A client that vanishes cannot leave its user "typing" for longer than this.
MAX_TIMEOUT_MS = 120_000
EXPIRY_INTERVAL_S = 1.0  # how late, at most, a typing notification stops


class TypingService:
    def __init__(
        self,
        store: TypingStore,
        rooms: RoomStore,
        notifier: Notifier,
        clock: Clock,
        outbox: EduOutbox | None = None,
    ) -> None:
        self._store = store
        # Other servers in the room are told (federation); None with federation off.
        self._outbox = outbox
        self._rooms = rooms
        self._notifier = notifier
        self._clock = clock

    async def set_typing(
        self,
        requester: Requester,
        room_id: RoomID,
        user_id: UserID,
        typing: bool,
        timeout_ms: int | None,
    ) -> None:
        """PUT /rooms/{roomId}/typing/{userId}"""
        if requester.user_id != user_id:
            raise MatrixError(Codes.FORBIDDEN, "You cannot set another user's typing state")
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            raise MatrixError(Codes.FORBIDDEN, "You are not joined to this room")
        now = self._clock.now_ms()
        if typing:
            timeout = DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms
            position = await self._store.start(
                room_id, user_id, now + min(timeout, MAX_TIMEOUT_MS), now
            )
        else:
            position = await self._store.stop(room_id, user_id)
        if position is not None:
            await self._notifier.notify(Stream.TYPING, position, room_id=room_id)
        if self._outbox is not None:
            # Every start, not only changes: the other servers time typing out themselves,
            # and a client renews it while its user types.
            await self._outbox.typing(room_id, user_id, typing)

    async def set_remote_typing(
        self, room_id: str, user_id: str, typing: bool, timeout_ms: int | None = None
    ) -> bool:
        """An ``m.typing`` EDU from the user's server (federation checked the origin); False
        when the user is not joined to the room (ignored)."""
        membership = await self._rooms.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            return False
        now = self._clock.now_ms()
        if typing:
            # spec, m.typing EDU: no timeout is sent; the sender stops it (or we time it out).
            timeout = DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms
            position = await self._store.start(
                room_id, user_id, now + min(timeout, MAX_TIMEOUT_MS), now
            )
        else:
            position = await self._store.stop(room_id, user_id)
        if position is not None:
            await self._notifier.notify(Stream.TYPING, position, room_id=room_id)
        return True

    async def expire_once(self) -> None:
        expired = await self._store.expire(self._clock.now_ms())
        for room_id in expired.room_ids:
            await self._notifier.notify(Stream.TYPING, expired.position, room_id=room_id)

    async def run_expiry(self) -> None:
        """The background job: stop whoever's timeout has passed, for ever."""
        while True:
            await self.expire_once()
            await asyncio.sleep(EXPIRY_INTERVAL_S)

    async def room_events(
        self,
        requester: Requester,
        room_ids: Sequence[str],
        since: StreamToken | None,
        now: StreamToken,
    ) -> dict[str, list[JsonDict]]:
        """``m.typing`` of each room whose list changed since the token (or is not empty)."""
        after = since.get(Stream.TYPING) if since is not None else None
        if after is not None and after >= now.get(Stream.TYPING):
            return {}
        found = await self._store.get_typing(
            room_ids, after, now.get(Stream.TYPING), self._clock.now_ms()
        )
        return {
            room_id: [{"type": "m.typing", "content": {"user_ids": user_ids}}]
            for room_id, user_ids in found.items()
        }
