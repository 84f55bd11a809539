"""GET /notifications (spec: "Listing Notifications"): the events that notified the user;
and the job that deletes old push actions, which would otherwise grow without end."""

from __future__ import annotations

import asyncio
import logging

import orjson

from homeserver.accounts.ignored import IgnoreLists
from homeserver.core.clock import Clock
from homeserver.core.config import PushConfig
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID
from homeserver.core.types import JsonDict, Requester
from homeserver.rooms.service import RoomService
from homeserver.storage.events import EventStore
from homeserver.storage.push import PushStore

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Push actions deleted per transaction: a short write lock (SQLite has one writer), and the
# send path gets its turn between batches.
PRUNE_BATCH = 1000


class NotificationService:
    def __init__(
        self, store: PushStore, events: EventStore, rooms: RoomService, ignored: IgnoreLists
    ) -> None:
        self._store = store
        self._events = events
        self._rooms = rooms
        self._ignored = ignored

    async def get_notifications(
        self, requester: Requester, from_token: str | None, limit: int | None, only: str | None
    ) -> JsonDict:
        before: int | None = None
        if from_token is not None:
            if not from_token.isdigit():
                raise MatrixError(Codes.INVALID_PARAM, "Invalid from token")
            before = int(from_token)
        if only is not None and only != "highlight":
            raise MatrixError(Codes.INVALID_PARAM, "only must be 'highlight'")
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        found = await self._store.get_notifications(
            requester.user_id, before, limit, only == "highlight"
        )
        loaded = await self._events.get_events(n.event_id for n, _ in found)
        # Made before the user ignored their sender (none are made after).
        ignored = await self._ignored.ignored_users(requester.user_id)
        versions: dict[str, str] = {}
        out: list[JsonDict] = []
        for n, read in found:
            event = loaded.get(n.event_id)
            if event is None or event.sender in ignored:
                continue
            if n.room_id not in versions:
                versions[n.room_id] = await self._rooms.room_version(RoomID(n.room_id))
            serialized = (
                await self._rooms.serialize(
                    requester, [event], versions[n.room_id], with_room_id=False
                )
            )[0]
            out.append(
                {
                    "actions": orjson.loads(n.actions_json),
                    "event": serialized,
                    "read": read,
                    "room_id": n.room_id,
                    "ts": n.ts,
                }
            )
        response: JsonDict = {"notifications": out}
        if len(found) == limit:
            response["next_token"] = str(found[-1][0].stream_ordering)
        return response


class PushActionPruner:
    """The background job: push actions older than ``push.action_retention_ms`` go, read or
    not (unread counts then forget them; /notifications stops listing them). Safe on several
    workers: they delete the same rows, one of them first."""

    def __init__(self, store: PushStore, clock: Clock, config: PushConfig) -> None:
        self._store = store
        self._clock = clock
        self._config = config

    async def run(self) -> None:
        while True:
            await self.prune()
            await asyncio.sleep(self._config.prune_interval_ms / 1000)

    async def prune(self) -> int:
        """Delete, batch after batch, until nothing is old enough; returns how many went."""
        before = self._clock.now_ms() - self._config.action_retention_ms
        total = 0
        while True:
            deleted = await self._store.prune_push_actions(before, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
            await asyncio.sleep(0)
        if total:
            logger.info("old push actions deleted", extra={"count": total})
        return total
