"""Presence (spec: presence): who is online, idle or offline, told to those who share a room.

The state lives in the database, so any worker answers for any user and the timers survive
restarts: a user's open syncs keep ``last_sync_ts`` fresh (at start, at end, and from this
worker's sweeper while a long-poll is held), activity moves ``last_active_ts``, and one
background job per worker turns stale timestamps into ``unavailable`` or ``offline``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from homeserver.core.clock import Clock
from homeserver.core.config import PresenceConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import UserID
from homeserver.core.outbox import EduOutbox
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.events import EventStore
from homeserver.storage.presence import (
    OFFLINE,
    ONLINE,
    UNAVAILABLE,
    PresenceState,
    PresenceStore,
)
from homeserver.wakeups.notifier import Notifier

logger = logging.getLogger(__name__)

PRESENCE_STATES = (ONLINE, UNAVAILABLE, OFFLINE)
# spec, "Last active ago": while currently_active is true clients treat the user as active
# and the server need not announce each activity; it stays true this long after the last one.
ACTIVE_WINDOW_MS = 60_000
# Timestamps that nobody is told about (last sync, activity while currently active) are
# written at most this often per user; the timers are coarser than this.
TOUCH_GRANULARITY_MS = 5_000
MAX_SWEEP_INTERVAL_S = 5.0


MAX_ACTIVE_SEEN = 100_000  # bound on the in-memory activity cache
# A remote user whose server stops telling us about them is offline after this (Synapse's
# federation timeout): their server sends changes, not a heartbeat per sync.
REMOTE_PRESENCE_TIMEOUT_MS = 30 * 60 * 1000
# Our users who are not offline are announced to other servers this often, within their
# timeout (the same pair of figures as Synapse's), so that they stay online there.
FEDERATION_PING_INTERVAL_S = 25 * 60.0


class PresenceService:
    def __init__(
        self,
        store: PresenceStore,
        notifier: Notifier,
        clock: Clock,
        config: PresenceConfig,
        events: EventStore,
        *,
        server_name: str = "",
        outbox: EduOutbox | None = None,
    ) -> None:
        self._store = store
        self._server_name = server_name
        # Other servers sharing a room with our users are told their changes (federation).
        self._outbox = outbox
        self._events = events
        self._notifier = notifier
        self._clock = clock
        self._config = config
        # Open syncs per user on this worker, refreshed in the database by the sweeper.
        self._open: Counter[str] = Counter()
        self._touched: dict[str, int] = {}  # user -> last_sync_ts this worker last wrote
        self._touch_ms = min(TOUCH_GRANULARITY_MS, config.offline_after_ms // 4)
        # user -> when this worker last saw them online and active; sends in between skip
        # the database (a send is the hot path, activity is only needed to the second).
        self._active_seen: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    @property
    def sweep_interval_s(self) -> float:
        # Often enough that an open connection is refreshed well before offline_after_ms.
        return min(MAX_SWEEP_INTERVAL_S, self._touch_ms / 1000)

    # --- connections and activity ------------------------------------------------------------

    @asynccontextmanager
    async def syncing(self, requester: Requester, set_presence: str) -> AsyncIterator[None]:
        """Around a /sync request: the user is connected while it is open (spec:
        ``set_presence``; ``offline`` means the request does not mark them online)."""
        if not self.enabled or set_presence == OFFLINE:
            yield
            return
        user_id = requester.user_id
        await self._connected(user_id, set_presence)
        self._open[user_id] += 1
        try:
            yield
        finally:
            self._open[user_id] -= 1
            if self._open[user_id] <= 0:
                del self._open[user_id]
            # The offline timer runs from the end of the last connection.
            await self._touch_sync(user_id, self._clock.now_ms())

    async def _connected(self, user_id: str, set_presence: str) -> None:
        now = self._clock.now_ms()
        current = await self._store.get(user_id)
        status_msg = current.status_msg if current else None
        if set_presence == ONLINE and (current is None or current.state == OFFLINE):
            # Coming online is activity; a user who is unavailable (idle, or by choice)
            # stays so until they do something (spec: "Idle timeout").
            await self._put(user_id, ONLINE, status_msg, last_active_ts=now, last_sync_ts=now)
            return
        if set_presence == UNAVAILABLE and (current is None or current.state != UNAVAILABLE):
            await self._put(
                user_id,
                UNAVAILABLE,
                status_msg,
                last_active_ts=current.last_active_ts if current else 0,
                last_sync_ts=now,
            )
            return
        await self._touch_sync(user_id, now)

    async def _touch_sync(self, user_id: str, now: int) -> None:
        last = self._touched.get(user_id)
        if last is not None and now - last < self._touch_ms:
            return
        await self._store.touch(user_id, last_sync_ts=now)
        self._touched[user_id] = now

    async def bump_active(self, user_id: UserID) -> None:
        """The user did something (sent an event): online and currently active again."""
        if not self.enabled:
            return
        now = self._clock.now_ms()
        if now - self._active_seen.get(user_id, -self._touch_ms) < self._touch_ms:
            return
        current = await self._store.get(user_id)
        self._active_seen[user_id] = now
        if len(self._active_seen) > MAX_ACTIVE_SEEN:
            self._active_seen.clear()
        if current is None or current.state != ONLINE or not current.currently_active:
            await self._put(
                user_id,
                ONLINE,
                current.status_msg if current else None,
                last_active_ts=now,
                last_sync_ts=current.last_sync_ts if current else 0,
            )
        elif now - current.last_active_ts >= self._touch_ms:
            await self._store.touch(user_id, last_active_ts=now)

    # --- the presence API ------------------------------------------------------------------

    async def set_presence(
        self,
        requester: Requester,
        user_id: UserID,
        presence: str,
        status_msg: str | None,
        *,
        status_msg_given: bool,
    ) -> None:
        """PUT /presence/{userId}/status; without ``status_msg`` the message is kept."""
        if requester.user_id != user_id:
            raise MatrixError(Codes.FORBIDDEN, "You cannot set the presence of another user")
        if presence not in PRESENCE_STATES:
            raise MatrixError(
                Codes.INVALID_PARAM, "presence must be online, unavailable or offline"
            )
        if not self.enabled:
            return  # accepted and ignored, as the spec leaves presence optional
        now = self._clock.now_ms()
        current = await self._store.get(user_id)
        if not status_msg_given:
            status_msg = current.status_msg if current else None
        status_msg = status_msg or None
        active = presence == ONLINE
        # spec: "When setting the status, the activity time is updated".
        if current is None or (current.state, current.status_msg, current.currently_active) != (
            presence,
            status_msg,
            active,
        ):
            await self._put(
                user_id,
                presence,
                status_msg,
                last_active_ts=now,
                last_sync_ts=current.last_sync_ts if current else 0,
            )
        else:
            await self._store.touch(user_id, last_active_ts=now)

    async def get_presence(self, requester: Requester, user_id: UserID) -> JsonDict:
        """GET /presence/{userId}/status: oneself, or someone who shares a room."""
        if requester.user_id != user_id and not await self._store.shares_a_room(
            requester.user_id, user_id
        ):
            raise MatrixError(Codes.FORBIDDEN, "You are not allowed to see their presence")
        state = await self._store.get(user_id) if self.enabled else None
        if state is None:
            return {"presence": OFFLINE}
        return self._content(state, self._clock.now_ms())

    # --- the sweeper -----------------------------------------------------------------------

    async def run_sweeper(self) -> None:
        """The background job: apply the timers, for ever."""
        while True:
            await self.sweep_once()
            await asyncio.sleep(self.sweep_interval_s)

    async def run_keepalive(self) -> None:
        """With several workers, every worker's job: its own open connections stay online."""
        while True:
            await self.keep_connected_once()
            await asyncio.sleep(self.sweep_interval_s)

    async def run_timeouts(self) -> None:
        """With several workers, the singleton job (one worker): the timers of everyone."""
        while True:
            await self.apply_timeouts_once()
            await asyncio.sleep(self.sweep_interval_s)

    async def sweep_once(self) -> None:
        await self.keep_connected_once()
        await self.apply_timeouts_once()

    async def keep_connected_once(self) -> None:
        """The users with a connection open on this worker are still connected."""
        now = self._clock.now_ms()
        connected = [u for u in self._open if now - self._touched.get(u, 0) >= self._touch_ms]
        if connected:
            await self._store.keep_connected(connected, now)
            self._touched.update(dict.fromkeys(connected, now))
        for user_id in [
            u
            for u, ts in self._touched.items()
            if u not in self._open and now - ts > self._config.offline_after_ms
        ]:
            del self._touched[user_id]

    async def apply_timeouts_once(self) -> None:
        """Whoever's timer ran out (on any worker) goes idle or offline."""
        now = self._clock.now_ms()
        result = await self._store.sweep(
            offline_before=now - self._config.offline_after_ms,
            idle_before=now - self._config.idle_after_ms,
            inactive_before=now - ACTIVE_WINDOW_MS,
        )
        if result.user_ids:
            logger.debug("presence timers applied", extra={"count": len(result.user_ids)})
            await self._announce(result.user_ids, result.position)

    # --- sync ------------------------------------------------------------------------------

    async def global_events(
        self, requester: Requester, since: StreamToken | None, now: StreamToken
    ) -> list[JsonDict]:
        """The ``presence`` section: changes of oneself and of users sharing a room."""
        if not self.enabled:
            return []
        user_id = requester.user_id
        upto = now.get(Stream.PRESENCE)
        if since is None:
            states = await self._store.get_all_shared(user_id, upto)
        else:
            by_user: dict[str, PresenceState] = {}
            if since.get(Stream.PRESENCE) < upto:
                by_user = {
                    s.user_id: s
                    for s in await self._store.get_changed(
                        user_id, since.get(Stream.PRESENCE), upto
                    )
                }
            window = await self._events.get_window(since.get(Stream.EVENTS), now.get(Stream.EVENTS))
            if window is None or window.members:
                # Someone new shares a room: their presence, though it did not change. Only a
                # membership event can bring them (a sync's ``now`` is committed).
                for s in await self._store.get_newly_shared(
                    user_id, since.get(Stream.EVENTS), now.get(Stream.EVENTS)
                ):
                    by_user.setdefault(s.user_id, s)
            states = [by_user[u] for u in sorted(by_user)]
        now_ms = self._clock.now_ms()
        return [
            {"type": "m.presence", "sender": s.user_id, "content": self._content(s, now_ms)}
            for s in states
        ]

    # --- helpers ---------------------------------------------------------------------------

    async def _put(
        self,
        user_id: str,
        state: str,
        status_msg: str | None,
        *,
        last_active_ts: int,
        last_sync_ts: int,
    ) -> None:
        if state != ONLINE:
            self._active_seen.pop(user_id, None)  # the next send must bring them back
        position = await self._store.put(
            user_id,
            state=state,
            status_msg=status_msg,
            last_active_ts=last_active_ts,
            last_sync_ts=last_sync_ts,
            currently_active=state == ONLINE,
        )
        if last_sync_ts:
            self._touched[user_id] = last_sync_ts
        await self._announce((user_id,), position)

    async def _announce(self, user_ids: Iterable[str], position: int) -> None:
        """Wake the subjects and everyone who shares a room with them, never strangers; tell
        the other servers sharing a room with our own users."""
        user_ids = list(user_ids)
        concerned = await self._store.get_sharing_users(user_ids)
        await self._notifier.notify(Stream.PRESENCE, position, user_ids=sorted(concerned))
        if self._outbox is None:
            return
        now = self._clock.now_ms()
        for user_id in user_ids:
            if UserID(user_id).server_name != self._server_name:
                continue
            state = await self._store.get(user_id)
            if state is not None:
                await self._outbox.presence(user_id, self._content(state, now))

    async def ping_remote_servers(self) -> int:
        """Tell other servers again about our users who are not offline; how many."""
        if self._outbox is None or not self.enabled:
            return 0
        now = self._clock.now_ms()
        present = await self._store.get_present(self._server_name)
        for state in present:
            await self._outbox.presence(state.user_id, self._content(state, now))
        return len(present)

    async def run_federation_pings(self) -> None:
        """The background job of ``ping_remote_servers``, for ever."""
        while True:
            await asyncio.sleep(FEDERATION_PING_INTERVAL_S)
            await self.ping_remote_servers()

    async def put_remote(
        self,
        user_id: UserID,
        presence: str,
        status_msg: str | None,
        last_active_ago: int | None,
        currently_active: bool,
    ) -> None:
        """An ``m.presence`` EDU about a remote user, from their server."""
        if not self.enabled or presence not in PRESENCE_STATES:
            return
        now = self._clock.now_ms()
        last_active = now - max(0, last_active_ago) if last_active_ago is not None else now
        position = await self._store.put(
            user_id,
            state=presence,
            status_msg=status_msg,
            last_active_ts=last_active,
            # The sweeper counts a user offline once their last sync is older than
            # offline_after_ms: a remote user's "last sync" is put that far past the time
            # their server last spoke, less the remote timeout.
            last_sync_ts=now + max(0, REMOTE_PRESENCE_TIMEOUT_MS - self._config.offline_after_ms),
            currently_active=currently_active and presence == ONLINE,
        )
        concerned = await self._store.get_sharing_users((user_id,))
        await self._notifier.notify(Stream.PRESENCE, position, user_ids=sorted(concerned))

    @staticmethod
    def _content(state: PresenceState, now_ms: int) -> JsonDict:
        content: JsonDict = {"presence": state.state}
        if state.last_active_ts > 0:
            content["last_active_ago"] = max(0, now_ms - state.last_active_ts)
        if state.state == ONLINE:
            # spec: the server "may include" it when online.
            content["currently_active"] = state.currently_active
        if state.status_msg is not None:
            content["status_msg"] = state.status_msg
        return content
