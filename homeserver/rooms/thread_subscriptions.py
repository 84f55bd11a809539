"""Thread subscriptions (MSC4306): a user subscribes to a thread by hand or, when their
client decides so because of an event in the thread, automatically; and the changes as a
stream for sliding sync's ``thread_subscriptions`` extension (MSC4308) and its pagination
endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import EventID, RoomID
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.events.model import StoredEvent
from homeserver.storage.thread_subscriptions import (
    Conflict,
    SubscriptionChange,
    ThreadSubscriptionStore,
)
from homeserver.wakeups.notifier import Notifier

if TYPE_CHECKING:
    from homeserver.rooms.service import RoomService

TOKEN_PREFIX = "ts"


def serialize_changes(changes: list[SubscriptionChange]) -> JsonDict:
    """``subscribed`` / ``unsubscribed`` by room and thread root (each only when not empty),
    with the change's stream position as its ``bump_stamp``."""
    subscribed: dict[str, dict[str, JsonDict]] = {}
    unsubscribed: dict[str, dict[str, JsonDict]] = {}
    for c in changes:
        if c.subscribed:
            entry: JsonDict = {"automatic": c.automatic, "bump_stamp": c.stream_id}
            subscribed.setdefault(c.room_id, {})[c.thread_root_id] = entry
        else:
            unsubscribed.setdefault(c.room_id, {})[c.thread_root_id] = {"bump_stamp": c.stream_id}
    out: JsonDict = {}
    if subscribed:
        out["subscribed"] = subscribed
    if unsubscribed:
        out["unsubscribed"] = unsubscribed
    return out


def token(stream_id: int) -> str:
    return f"{TOKEN_PREFIX}{stream_id}"


def parse_token(raw: str) -> int | None:
    """The stream position of a ``ts<n>`` token; None when it is not one."""
    digits = raw[len(TOKEN_PREFIX) :] if raw.startswith(TOKEN_PREFIX) else ""
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
        return None
    return int(digits)


class ThreadSubscriptionService:
    def __init__(
        self, store: ThreadSubscriptionStore, rooms: RoomService, notifier: Notifier
    ) -> None:
        self._store = store
        self._rooms = rooms
        self._notifier = notifier

    async def get(self, requester: Requester, room_id: RoomID, root_id: EventID) -> JsonDict:
        await self._visible(requester, room_id, root_id)
        found = await self._store.get(requester.user_id, room_id, root_id)
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, "Not subscribed to this thread")
        return {"automatic": found.automatic}

    async def subscribe(
        self,
        requester: Requester,
        room_id: RoomID,
        root_id: EventID,
        automatic: EventID | None,
    ) -> None:
        await self._visible(requester, room_id, root_id)
        cause_position: int | None = None
        if automatic is not None:
            cause = await self._visible(requester, room_id, automatic)
            relates = cause.content.get("m.relates_to")
            if (
                not isinstance(relates, dict)
                or relates.get("rel_type") != "m.thread"
                or relates.get("event_id") != root_id
            ):
                raise MatrixError(
                    Codes.MSC4306_NOT_IN_THREAD,
                    "An automatic subscription needs an event of the thread",
                )
            cause_position = cause.stream_ordering
        outcome = await self._store.subscribe(
            requester.user_id, room_id, root_id, cause_position=cause_position
        )
        if isinstance(outcome, Conflict):
            raise MatrixError(
                Codes.MSC4306_CONFLICTING_UNSUBSCRIPTION,
                "The user unsubscribed from the thread after this event",
            )
        if outcome is not None:
            await self._changed(requester.user_id, outcome)

    async def unsubscribe(self, requester: Requester, room_id: RoomID, root_id: EventID) -> None:
        await self._visible(requester, room_id, root_id)
        outcome = await self._store.unsubscribe(requester.user_id, room_id, root_id)
        if outcome is not None:
            await self._changed(requester.user_id, outcome)

    async def changes(
        self, user_id: str, *, after: int, upto: int | None, limit: int
    ) -> tuple[JsonDict, int | None]:
        """The latest ``limit`` changes in ``(after, upto]`` (``upto`` None: up to now),
        serialized, and the position to paginate back from when there may be older ones
        (None when there are not)."""
        if upto is None:
            upto = await self._store.current_position()
        found = await self._store.changes(user_id, after=after, upto=upto, limit=limit)
        more = found[0].stream_id - 1 if len(found) == limit and found else None
        return serialize_changes(found), more

    async def _visible(
        self, requester: Requester, room_id: RoomID, event_id: EventID
    ) -> StoredEvent:
        try:
            _, _, event = await self._rooms.visible_event(requester, room_id, event_id)
        except MatrixError as e:
            # Outside the room, or hidden: the same 404 as an unknown event (Synapse too).
            if e.code != Codes.FORBIDDEN:
                raise
            raise MatrixError(Codes.NOT_FOUND, "Event not found") from None
        return event

    async def _changed(self, user_id: str, position: int) -> None:
        await self._notifier.notify(Stream.THREAD_SUBSCRIPTIONS, position, user_ids=(user_id,))
