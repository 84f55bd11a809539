"""The admin API on media (Synapse's ``/_synapse/admin/v1/media...``, issue 22): lists per user
and room, quarantine and protection, deletion by ID, by user, by age and size (the stored
files, thumbnails and S3 objects too), per-user statistics.

Every method takes the requester and refuses anyone but a server administrator first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from homeserver.admin.users import require_admin
from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import RoomID, UserID
from homeserver.core.types import JsonDict, Requester
from homeserver.storage.admin_media import AdminMediaStore, MediaRecord
from homeserver.storage.rooms import RoomStore

logger = logging.getLogger(__name__)

# Deletions by age and size and by user go in batches: the rows of one batch in one
# transaction, then its files.
DELETE_BATCH = 100


class MediaFiles(Protocol):
    """The media repository's storage backend (media_repo/service.py)."""

    async def delete_content(
        self, sha256s: list[str], thumbnails: list[tuple[str, int, int, str, bool]]
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class MediaQuery:
    offset: int
    limit: int
    order_by: str = "created_ts"
    backwards: bool = True  # newest first unless asked otherwise, as Synapse


def media_json(m: MediaRecord) -> JsonDict:
    return {
        "media_id": m.media_id,
        "created_ts": m.created_ts,
        "last_access_ts": m.last_access_ts,
        "media_length": m.media_length,
        "media_type": m.media_type,
        "upload_name": m.upload_name,
        "quarantined_by": m.quarantined_by,
        "safe_from_quarantine": m.safe_from_quarantine,
    }


class AdminMedia:
    def __init__(
        self,
        store: AdminMediaStore,
        files: MediaFiles,
        rooms: RoomStore,
        clock: Clock,
        server_name: str,
    ) -> None:
        self._store = store
        self._files = files
        self._rooms = rooms
        self._clock = clock
        self._server_name = server_name

    @property
    def server_name(self) -> str:
        return self._server_name

    async def user_media(
        self, requester: Requester, user_id: UserID, query: MediaQuery
    ) -> tuple[list[JsonDict], int, int | None]:
        require_admin(requester)
        found, total = await self._store.list_user_media(
            user_id, query.offset, query.limit, query.order_by, query.backwards
        )
        next_offset = query.offset + len(found)
        return [media_json(m) for m in found], total, next_offset if next_offset < total else None

    async def media_info(self, requester: Requester, server_name: str, media_id: str) -> JsonDict:
        require_admin(requester)
        found = (
            await self._store.get_local_media(media_id)
            if server_name == self._server_name
            else None  # no cache of other servers' media yet
        )
        if found is None:
            raise MatrixError(Codes.NOT_FOUND, "Media not found")
        return {
            **media_json(found),
            "media_origin": server_name,
            "user_id": found.user_id,
            "sha256": found.sha256,
            "authenticated": True,
            "url_cache": None,
        }

    async def room_media(self, requester: Requester, room_id: RoomID) -> JsonDict:
        require_admin(requester)
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Room not found")
        local: list[str] = []
        remote: list[str] = []
        for server, media_id in await self._store.room_media(room_id):
            (local if server == self._server_name else remote).append(f"mxc://{server}/{media_id}")
        return {"local": local, "remote": remote}

    # --- quarantine ----------------------------------------------------------------------------

    async def quarantine_one(
        self, requester: Requester, server_name: str, media_id: str, on: bool
    ) -> None:
        require_admin(requester)
        if on:
            await self._store.quarantine(
                [(server_name, media_id)], requester.user_id, self._clock.now_ms()
            )
        else:
            await self._store.unquarantine(server_name, media_id)
        logger.info(
            "media quarantine changed",
            extra={"media_id": media_id, "server": server_name, "on": on},
        )

    async def quarantine_room(self, requester: Requester, room_id: RoomID) -> int:
        require_admin(requester)
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Room not found")
        items = await self._store.room_media(room_id)
        return await self._store.quarantine(items, requester.user_id, self._clock.now_ms())

    async def quarantine_user(self, requester: Requester, user_id: UserID) -> int:
        require_admin(requester)
        items = [(self._server_name, m) for m in await self._store.user_media_ids(user_id)]
        return await self._store.quarantine(items, requester.user_id, self._clock.now_ms())

    async def protect(self, requester: Requester, media_id: str, protected: bool) -> None:
        require_admin(requester)
        if await self._store.get_local_media(media_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Media not found")
        await self._store.set_protected(media_id, protected)

    async def is_quarantined(self, server_name: str, media_id: str) -> bool:
        """For the media repository: quarantined media is served to nobody."""
        return await self._store.is_quarantined(server_name, media_id)

    # --- deletion ------------------------------------------------------------------------------

    async def _delete(self, media_ids: list[str]) -> list[str]:
        deleted = await self.delete_media(media_ids)
        if deleted:
            logger.info("media deleted by an administrator", extra={"count": len(deleted)})
        return deleted

    async def delete_media(self, media_ids: list[str]) -> list[str]:
        """Delete local media, rows then stored content and thumbnails: for the admin
        API's deletions and for the media retention job (homeserver/media_retention.py)."""
        deleted: list[str] = []
        for start in range(0, len(media_ids), DELETE_BATCH):
            batch, orphans = await self._store.delete_local_media(
                media_ids[start : start + DELETE_BATCH]
            )
            await self._files.delete_content(orphans.content, orphans.thumbnails)
            deleted.extend(batch)
        return deleted

    async def purge_not_accessed_since(self, before_ts: int) -> int:
        """Delete other servers' media cached here that no client asked for since
        ``before_ts``, with its content and thumbnails unless other media shares them: for
        the retention job (``remote_media_lifetime_ms``) and ``purge_media_cache``."""
        deleted = 0
        while True:
            count, orphans = await self._store.delete_remote_media_not_accessed_since(
                before_ts, DELETE_BATCH
            )
            await self._files.delete_content(orphans.content, orphans.thumbnails)
            deleted += count
            if count < DELETE_BATCH:
                return deleted

    async def purge_media_cache(self, requester: Requester, before_ts: int) -> JsonDict:
        """POST /_synapse/admin/v1/purge_media_cache?before_ts="""
        require_admin(requester)
        deleted = await self.purge_not_accessed_since(before_ts)
        if deleted:
            logger.info("remote media cache purged", extra={"count": deleted})
        return {"deleted": deleted}

    async def delete_one(self, requester: Requester, server_name: str, media_id: str) -> list[str]:
        require_admin(requester)
        if server_name != self._server_name:
            raise MatrixError(Codes.INVALID_PARAM, "Only local media can be deleted")
        if await self._store.get_local_media(media_id) is None:
            raise MatrixError(Codes.NOT_FOUND, "Media not found")
        return await self._delete([media_id])

    async def delete_by_age(
        self, requester: Requester, before_ts: int, size_gt: int, keep_profiles: bool
    ) -> list[str]:
        require_admin(requester)
        ids = await self._store.media_to_delete(before_ts, size_gt, keep_profiles)
        return await self._delete(ids)

    async def delete_user_media(
        self, requester: Requester, user_id: UserID, query: MediaQuery
    ) -> list[str]:
        require_admin(requester)
        found, _ = await self._store.list_user_media(
            user_id, 0, query.limit, query.order_by, query.backwards
        )
        return await self._delete([m.media_id for m in found])

    async def statistics(
        self,
        requester: Requester,
        query: MediaQuery,
        from_ts: int | None,
        until_ts: int | None,
        search_term: str | None,
    ) -> tuple[list[JsonDict], int, int | None]:
        require_admin(requester)
        users, total = await self._store.user_media_statistics(
            query.offset,
            query.limit,
            query.order_by,
            query.backwards,
            from_ts,
            until_ts,
            search_term,
        )
        next_offset = query.offset + len(users)
        return users, total, next_offset if next_offset < total else None
