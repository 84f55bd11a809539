"""Account data (spec: Client Config), room tags and the ignored-user list.

Also the sync source of the top-level and per-room ``account_data`` sections, and the list of
ignored users that sync and /messages hide events from.
"""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.caches.invalidations import IGNORED_USERS, PUSH_RULES, CacheInvalidations
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.streams import Stream, StreamToken
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.rooms import RoomStore
from homeserver.wakeups.notifier import Notifier

MAX_TAG_BYTES = 255  # spec, room tagging: a tag name is at most 255 bytes
MAX_TYPE_BYTES = 255  # spec, size limits: an event type is at most 255 bytes
# spec, account data "Server Behaviour": types the server manages are refused with a 405,
# globally and per room. m.tag is ours too: a room's tags are written through the tags API.
SERVER_MANAGED = frozenset({"m.fully_read", "m.push_rules"})
TAG = "m.tag"
DIRECT = "m.direct"
IGNORED_USER_LIST = "m.ignored_user_list"


INVITE_PERMISSION_CONFIG = "m.invite_permission_config"
# Global account data that workers keep compiled in a cache, and that cache's name.
CACHED_TYPES = {IGNORED_USER_LIST: IGNORED_USERS, "m.push_rules": PUSH_RULES}


class AccountDataService:
    """Implements the sync sources ``GlobalSource``, ``RoomSource`` and ``IgnoredUsers``."""

    def __init__(
        self,
        store: AccountDataStore,
        rooms: RoomStore,
        notifier: Notifier,
        invalidations: CacheInvalidations | None = None,
    ) -> None:
        self._invalidations = invalidations
        self._store = store
        self._rooms = rooms
        self._notifier = notifier

    # --- global ----------------------------------------------------------------------------

    async def set_account_data(
        self, requester: Requester, user_id: UserID, data_type: str, content: JsonDict
    ) -> None:
        _check_owner(requester, user_id, "set account data")
        _check_writable(data_type)
        if data_type == IGNORED_USER_LIST:
            _check_ignored_user_list(user_id, content)
        elif data_type == DIRECT:
            _check_direct(content)
        await self.set_server_account_data(user_id, None, data_type, content)

    async def get_account_data(
        self, requester: Requester, user_id: UserID, data_type: str
    ) -> JsonDict:
        _check_owner(requester, user_id, "read account data")
        content = await self._store.get(user_id, None, data_type)
        if content is None:
            raise MatrixError(Codes.NOT_FOUND, "Account data not found")
        return content

    async def set_server_account_data(
        self, user_id: UserID, room_id: RoomID | None, data_type: str, content: JsonDict
    ) -> None:
        """Write any type unchecked: for services that own a type (read markers' m.fully_read,
        push rules' m.push_rules). Wakes the user's syncs."""
        position = await self._store.put(user_id, room_id, data_type, content)
        cache = CACHED_TYPES.get(data_type) if room_id is None else None
        if cache is not None and self._invalidations is not None:
            # Every worker's copy goes, even if this wake-up is lost.
            await self._invalidations.invalidate(cache, (user_id,))
        await self._notifier.notify(Stream.ACCOUNT_DATA, position, user_ids=(user_id,))

    # --- per room --------------------------------------------------------------------------

    async def set_room_account_data(
        self,
        requester: Requester,
        user_id: UserID,
        room_id: RoomID,
        data_type: str,
        content: JsonDict,
    ) -> None:
        _check_owner(requester, user_id, "set account data")
        _check_writable(data_type)
        if data_type == TAG:
            raise MatrixError(Codes.BAD_JSON, "Room tags are set through the tags API", status=405)
        await self._check_membership(user_id, room_id)
        await self.set_server_account_data(user_id, room_id, data_type, content)

    async def get_room_account_data(
        self, requester: Requester, user_id: UserID, room_id: RoomID, data_type: str
    ) -> JsonDict:
        _check_owner(requester, user_id, "read account data")
        if data_type == TAG:
            tags = await self._store.get_room_tags(user_id, room_id)
            if tags:
                return {"tags": tags}
            raise MatrixError(Codes.NOT_FOUND, "Room account data not found")
        content = await self._store.get(user_id, room_id, data_type)
        if content is None:
            raise MatrixError(Codes.NOT_FOUND, "Room account data not found")
        return content

    # --- tags ------------------------------------------------------------------------------

    async def get_room_tags(
        self, requester: Requester, user_id: UserID, room_id: RoomID
    ) -> dict[str, JsonDict]:
        _check_owner(requester, user_id, "read tags")
        return await self._store.get_room_tags(user_id, room_id)

    async def set_room_tag(
        self, requester: Requester, user_id: UserID, room_id: RoomID, tag: str, content: JsonDict
    ) -> None:
        _check_owner(requester, user_id, "set tags")
        _check_tag(tag)
        await self._check_membership(user_id, room_id)
        position = await self._store.put_room_tag(user_id, room_id, tag, content)
        await self._notifier.notify(Stream.ACCOUNT_DATA, position, user_ids=(user_id,))

    async def delete_room_tag(
        self, requester: Requester, user_id: UserID, room_id: RoomID, tag: str
    ) -> None:
        _check_owner(requester, user_id, "remove tags")
        _check_tag(tag)
        if tag not in await self._store.get_room_tags(user_id, room_id):
            return  # nothing to remove; a 200 all the same, as for a repeated DELETE
        position = await self._store.delete_room_tag(user_id, room_id, tag)
        await self._notifier.notify(Stream.ACCOUNT_DATA, position, user_ids=(user_id,))

    async def _check_membership(self, user_id: UserID, room_id: RoomID) -> None:
        if await self._rooms.get_membership(room_id, user_id) is None:
            raise MatrixError(Codes.FORBIDDEN, "You have no membership in this room")

    # --- sync ------------------------------------------------------------------------------

    async def global_events(
        self, requester: Requester, since: StreamToken | None, now: StreamToken
    ) -> list[JsonDict]:
        """``GlobalSource``: the top-level ``account_data`` events."""
        after, upto = _range(since, now)
        if after is not None and after >= upto:
            return []
        items = await self._store.get_changed(
            requester.user_id, rooms=False, after=after, upto=upto
        )
        return [{"type": i.type, "content": i.content} for i in items]

    async def room_events(
        self,
        requester: Requester,
        room_ids: Sequence[str],
        since: StreamToken | None,
        now: StreamToken,
    ) -> dict[str, list[JsonDict]]:
        """``RoomSource``: each room's ``account_data``, tags as one ``m.tag`` event."""
        after, upto = _range(since, now)
        if not room_ids or (after is not None and after >= upto):
            return {}
        wanted = set(room_ids)
        out: dict[str, list[JsonDict]] = {}
        for item in await self._store.get_changed(
            requester.user_id, rooms=True, after=after, upto=upto
        ):
            if item.room_id in wanted and item.type != TAG:
                out.setdefault(item.room_id, []).append(
                    {"type": item.type, "content": item.content}
                )
        tags = await self._store.get_tags_changed(requester.user_id, wanted, after=after, upto=upto)
        for room_id, room_tags in tags.items():
            out.setdefault(room_id, []).append({"type": TAG, "content": {"tags": room_tags}})
        return out

    async def blocks_invites(self, user_id: UserID) -> bool:
        """spec v1.18, "Invite permission": ``default_action: block`` refuses every invite."""
        content = await self._store.get(user_id, None, INVITE_PERMISSION_CONFIG)
        return content is not None and content.get("default_action") == "block"

    async def direct_room_ids(self, user_id: UserID) -> frozenset[str]:
        """The rooms the user's ``m.direct`` lists as direct chats (sliding sync's ``is_dm``)."""
        content = await self._store.get(user_id, None, DIRECT) or {}
        return frozenset(
            room_id
            for rooms in content.values()
            if isinstance(rooms, list)
            for room_id in rooms
            if isinstance(room_id, str)
        )

    async def tag_names(self, user_id: UserID) -> dict[str, frozenset[str]]:
        """Each room the user tagged -> its tags' names (sliding sync's ``tags`` filters)."""
        return await self._store.get_tag_names(user_id)

    async def ignored_users(self, user_id: UserID) -> frozenset[str]:
        """``IgnoredUsers``: the keys of the user's ``m.ignored_user_list``."""
        return parse_ignored_users(await self._store.get(user_id, None, IGNORED_USER_LIST))


NOBODY: frozenset[str] = frozenset()


def parse_ignored_users(content: JsonDict | None) -> frozenset[str]:
    """The user IDs an ``m.ignored_user_list`` content ignores."""
    ignored = content.get("ignored_users") if content is not None else None
    if not isinstance(ignored, dict) or not ignored:
        return NOBODY
    return frozenset(ignored)


def _range(since: StreamToken | None, now: StreamToken) -> tuple[int | None, int]:
    after = since.get(Stream.ACCOUNT_DATA) if since is not None else None
    return after, now.get(Stream.ACCOUNT_DATA)


def _check_owner(requester: Requester, user_id: UserID, what: str) -> None:
    if requester.user_id != user_id:
        raise MatrixError(Codes.FORBIDDEN, f"Cannot {what} for another user")


def _check_writable(data_type: str) -> None:
    if not data_type:
        raise MatrixError(Codes.INVALID_PARAM, "Type is empty")
    if len(data_type.encode()) > MAX_TYPE_BYTES:
        raise MatrixError(Codes.INVALID_PARAM, f"Type is longer than {MAX_TYPE_BYTES} bytes")
    if data_type in SERVER_MANAGED:
        raise MatrixError(Codes.BAD_JSON, f"Cannot set {data_type} through this API", status=405)


def _check_tag(tag: str) -> None:
    if not tag:
        raise MatrixError(Codes.INVALID_PARAM, "Tag is empty")
    if len(tag.encode()) > MAX_TAG_BYTES:
        raise MatrixError(Codes.INVALID_PARAM, f"Tag is longer than {MAX_TAG_BYTES} bytes")


def _check_ignored_user_list(user_id: UserID, content: JsonDict) -> None:
    """spec: m.ignored_user_list: ``ignored_users`` maps user IDs to (empty) objects."""
    ignored = content.get("ignored_users")
    if not isinstance(ignored, dict):
        raise MatrixError(Codes.BAD_JSON, "ignored_users must be an object")
    for other in ignored:
        UserID.parse(other)
        if other == user_id:
            raise MatrixError(Codes.INVALID_PARAM, "You cannot ignore yourself")


def _check_direct(content: JsonDict) -> None:
    """spec: m.direct maps a user (or a 3PID invite's address) to a list of room IDs."""
    for key, room_ids in content.items():
        if not isinstance(room_ids, list) or not all(isinstance(r, str) for r in room_ids):
            raise MatrixError(Codes.BAD_JSON, f"m.direct[{key!r}] must be a list of room IDs")
