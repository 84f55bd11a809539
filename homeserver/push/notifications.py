"""GET /notifications (spec: "Listing Notifications"): the events that notified the user."""

from __future__ import annotations

import orjson

from homeserver.errors import Codes, MatrixError
from homeserver.rooms.service import RoomService
from homeserver.storage.events import EventStore
from homeserver.storage.push import PushStore
from homeserver.types import JsonDict, Requester

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class NotificationService:
    def __init__(self, store: PushStore, events: EventStore, rooms: RoomService) -> None:
        self._store = store
        self._events = events
        self._rooms = rooms

    async def get_notifications(self, requester: Requester, from_token: str | None,
                                limit: int | None, only: str | None) -> JsonDict:
        before: int | None = None
        if from_token is not None:
            if not from_token.isdigit():
                raise MatrixError(Codes.INVALID_PARAM, "Invalid from token")
            before = int(from_token)
        if only is not None and only != "highlight":
            raise MatrixError(Codes.INVALID_PARAM, "only must be 'highlight'")
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        found = await self._store.get_notifications(requester.user_id, before, limit,
                                                    only == "highlight")
        loaded = await self._events.get_events(n.event_id for n, _ in found)
        versions: dict[str, str] = {}
        out: list[JsonDict] = []
        for n, read in found:
            event = loaded.get(n.event_id)
            if event is None:
                continue
            if n.room_id not in versions:
                versions[n.room_id] = await self._rooms.room_version(n.room_id)
            serialized = (await self._rooms.serialize(requester, [event], versions[n.room_id],
                                                      with_room_id=False))[0]
            out.append({"actions": orjson.loads(n.actions_json), "event": serialized,
                        "read": read, "room_id": n.room_id, "ts": n.ts})
        response: JsonDict = {"notifications": out}
        if len(found) == limit:
            response["next_token"] = str(found[-1][0].stream_ordering)
        return response
