"""Media metadata: local media rows (uploader, type, size, sha256) and their thumbnails."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.core.ids import UserID
from homeserver.storage.database import Database
from homeserver.storage.schema import media, media_thumbnails, remote_media


@dataclass(frozen=True, slots=True)
class MediaInfo:
    media_id: str
    user_id: UserID
    created_ts: int
    expires_ts: int | None
    upload_ts: int | None
    content_type: str | None
    upload_name: str | None
    size: int | None
    sha256: str | None
    width: int | None
    height: int | None
    animated: bool

    @property
    def uploaded(self) -> bool:
        return self.upload_ts is not None


@dataclass(frozen=True, slots=True)
class ContentInfo:
    """What is known of stored content once it arrives."""

    size: int
    sha256: str
    content_type: str
    upload_name: str | None
    width: int | None = None
    height: int | None = None
    animated: bool = False


@dataclass(frozen=True, slots=True)
class ThumbnailInfo:
    sha256: str  # the source content's
    width: int
    height: int
    method: str
    animated: bool
    content_type: str
    size: int


def _media_info(row: sa.Row[tuple[object, ...]]) -> MediaInfo:
    m = row._mapping
    return MediaInfo(
        media_id=m["media_id"],
        user_id=UserID(m["user_id"]),
        created_ts=int(m["created_ts"]),
        expires_ts=None if m["expires_ts"] is None else int(m["expires_ts"]),
        upload_ts=None if m["upload_ts"] is None else int(m["upload_ts"]),
        content_type=m["content_type"],
        upload_name=m["upload_name"],
        size=None if m["size"] is None else int(m["size"]),
        sha256=m["sha256"],
        width=m["width"],
        height=m["height"],
        animated=bool(m["animated"]),
    )


class MediaStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_media(
        self, media_id: str, user_id: UserID, now_ms: int, content: ContentInfo
    ) -> None:
        """Record uploaded content under a new media ID."""
        async with self._db.write() as conn:
            await conn.execute(
                sa.insert(media).values(
                    media_id=media_id,
                    user_id=user_id,
                    created_ts=now_ms,
                    expires_ts=None,
                    upload_ts=now_ms,
                    **_content_values(content),
                )
            )

    async def add_pending(
        self, media_id: str, user_id: UserID, now_ms: int, expires_ts: int, max_pending: int
    ) -> bool:
        """Reserve a media ID for a later upload; False if the user holds ``max_pending``."""
        async with self._db.write() as conn:
            pending = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(media)
                    .where(
                        media.c.user_id == user_id,
                        media.c.upload_ts.is_(None),
                        media.c.expires_ts > now_ms,
                    )
                )
            ).scalar_one()
            if int(pending) >= max_pending:
                return False
            await conn.execute(
                sa.insert(media).values(
                    media_id=media_id,
                    user_id=user_id,
                    created_ts=now_ms,
                    expires_ts=expires_ts,
                    upload_ts=None,
                    animated=False,
                )
            )
        return True

    async def complete_pending(self, media_id: str, now_ms: int, content: ContentInfo) -> bool:
        """Attach content to a pending media ID; False if it is no longer pending."""
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(media)
                .where(
                    media.c.media_id == media_id,
                    media.c.upload_ts.is_(None),
                    media.c.expires_ts > now_ms,
                )
                .values(upload_ts=now_ms, expires_ts=None, **_content_values(content))
            )
        return bool(result.rowcount == 1)

    async def get_media(self, media_id: str) -> MediaInfo | None:
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(media).where(media.c.media_id == media_id))).first()
        return None if row is None else _media_info(row)

    async def usage_bytes(self, user_id: UserID) -> int:
        """The total size of what ``user_id`` has uploaded (for quotas)."""
        async with self._db.read() as conn:
            total = (
                await conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(media.c.size), 0)).where(
                        media.c.user_id == user_id, media.c.upload_ts.is_not(None)
                    )
                )
            ).scalar_one()
        return int(total)

    async def get_thumbnail(
        self, sha256: str, width: int, height: int, method: str, animated: bool
    ) -> ThumbnailInfo | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(media_thumbnails).where(
                        media_thumbnails.c.sha256 == sha256,
                        media_thumbnails.c.width == width,
                        media_thumbnails.c.height == height,
                        media_thumbnails.c.method == method,
                        media_thumbnails.c.animated == animated,
                    )
                )
            ).first()
        if row is None:
            return None
        m = row._mapping
        return ThumbnailInfo(
            sha256=m["sha256"],
            width=int(m["width"]),
            height=int(m["height"]),
            method=m["method"],
            animated=bool(m["animated"]),
            content_type=m["content_type"],
            size=int(m["size"]),
        )

    async def count_thumbnails(self, sha256: str) -> int:
        async with self._db.read() as conn:
            count = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(media_thumbnails)
                    .where(media_thumbnails.c.sha256 == sha256)
                )
            ).scalar_one()
        return int(count)

    async def add_thumbnail(self, thumbnail: ThumbnailInfo, now_ms: int) -> None:
        """Record a stored thumbnail; one made at the same time by another request wins."""
        row = {
            "sha256": thumbnail.sha256,
            "width": thumbnail.width,
            "height": thumbnail.height,
            "method": thumbnail.method,
            "animated": thumbnail.animated,
            "content_type": thumbnail.content_type,
            "size": thumbnail.size,
            "created_ts": now_ms,
        }
        async with self._db.write() as conn:
            await conn.execute(
                self._db.insert_ignore(
                    media_thumbnails, row, keys=("sha256", "width", "height", "method", "animated")
                )
            )

    # --- remote media (issue 18) -------------------------------------------------------------

    async def get_remote_media(self, server_name: str, media_id: str) -> ContentInfo | None:
        """Cached content of another server's media, or None if it was never fetched."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(remote_media).where(
                        remote_media.c.server_name == server_name,
                        remote_media.c.media_id == media_id,
                    )
                )
            ).first()
        if row is None:
            return None
        m = row._mapping
        return ContentInfo(
            size=int(m["size"]),
            sha256=m["sha256"],
            content_type=m["content_type"],
            upload_name=m["upload_name"],
            width=m["width"],
            height=m["height"],
            animated=bool(m["animated"]),
        )

    async def add_remote_media(
        self, server_name: str, media_id: str, now_ms: int, content: ContentInfo
    ) -> None:
        """Record fetched content; a row another worker wrote first stands."""
        row = {
            "server_name": server_name,
            "media_id": media_id,
            "fetched_ts": now_ms,
            "last_access_ts": now_ms,
            **_content_values(content),
        }
        async with self._db.write() as conn:
            await conn.execute(
                self._db.insert_ignore(remote_media, row, keys=("server_name", "media_id"))
            )

    async def touch_remote_media(self, server_name: str, media_id: str, now_ms: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(remote_media)
                .where(
                    remote_media.c.server_name == server_name,
                    remote_media.c.media_id == media_id,
                )
                .values(last_access_ts=now_ms)
            )


def _content_values(content: ContentInfo) -> dict[str, object]:
    return {
        "content_type": content.content_type,
        "upload_name": content.upload_name,
        "size": content.size,
        "sha256": content.sha256,
        "width": content.width,
        "height": content.height,
        "animated": content.animated,
    }
