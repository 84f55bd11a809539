"""Rooms two users share (GET /_matrix/client/v1/mutual_rooms, spec v1.19)."""

from __future__ import annotations

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.rooms import RoomStore

PAGE_SIZE = 100


class MutualRooms:
    def __init__(self, rooms: RoomStore) -> None:
        self._rooms = rooms

    async def mutual_rooms(
        self, requester: Requester, other: UserID, since: str | None
    ) -> JsonDict:
        """The rooms both have joined, by room ID, a page at a time; ``since`` is the
        ``next_batch`` of the page before (the last room ID it held)."""
        if other == requester.user_id:
            raise MatrixError(Codes.INVALID_PARAM, "user_id is your own user ID")
        if since is not None:
            try:
                RoomID.parse(since)
            except MatrixError:
                raise MatrixError(Codes.INVALID_PARAM, "Invalid from token") from None
        mine = await self._rooms.get_user_memberships(requester.user_id, ["join"])
        theirs = await self._rooms.get_user_memberships(other, ["join"])
        shared = sorted({m.room_id for m in mine} & {m.room_id for m in theirs})
        after = [r for r in shared if since is None or r > since]
        page = after[:PAGE_SIZE]
        body: JsonDict = {"joined": page, "count": len(shared)}
        if len(after) > PAGE_SIZE:
            body["next_batch"] = page[-1]
        return body
