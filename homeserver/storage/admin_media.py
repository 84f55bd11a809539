"""What the admin API reads and does on media: lists per user and room, quarantine,
protection, deletion by ID, age and size, per-user statistics (issue 22)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import (
    events,
    media,
    media_moderation,
    media_thumbnails,
    profiles,
    remote_media,
    room_memberships,
)

_MXC = re.compile(r"mxc://([A-Za-z0-9.\-:\[\]]+)/([A-Za-z0-9_-]+)")
_mm = media_moderation.c


@dataclass(frozen=True, slots=True)
class MediaRecord:
    media_id: str
    user_id: str
    created_ts: int
    media_length: int | None
    media_type: str | None
    upload_name: str | None
    quarantined_by: str | None
    safe_from_quarantine: bool
    sha256: str | None = None
    last_access_ts: int | None = None


@dataclass(frozen=True, slots=True)
class Orphans:
    """What a deletion left unused in the storage backend: content by sha256, and the
    thumbnails of that content (sha256, width, height, method, animated)."""

    content: list[str]
    thumbnails: list[tuple[str, int, int, str, bool]]


MEDIA_ORDERS: dict[str, sa.ColumnElement[Any]] = {
    "media_id": media.c.media_id,
    "upload_name": media.c.upload_name,
    "created_ts": media.c.created_ts,
    "last_access_ts": sa.func.coalesce(media.c.last_access_ts, media.c.created_ts),
    "media_length": media.c.size,
    "media_type": media.c.content_type,
    "quarantined_by": _mm.quarantined_by,
    "safe_from_quarantine": sa.func.coalesce(_mm.safe_from_quarantine, False),
}
STATS_ORDERS = ("user_id", "displayname", "media_length", "media_count")


def _record(r: Any) -> MediaRecord:
    return MediaRecord(
        r.media_id,
        r.user_id,
        int(r.created_ts),
        None if r.size is None else int(r.size),
        r.content_type,
        r.upload_name,
        r.quarantined_by,
        bool(r.safe_from_quarantine),
        r.sha256,
        None if r.last_access_ts is None else int(r.last_access_ts),
    )


class AdminMediaStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self._db = db
        self._server_name = server_name

    def _local_join(self) -> sa.Join:
        return media.outerjoin(
            media_moderation,
            sa.and_(_mm.media_origin == self._server_name, _mm.media_id == media.c.media_id),
        )

    async def list_user_media(
        self, user_id: str, offset: int, limit: int, order_by: str, backwards: bool
    ) -> tuple[list[MediaRecord], int]:
        order = MEDIA_ORDERS[order_by]
        select = (
            sa.select(
                media,
                _mm.quarantined_by,
                sa.func.coalesce(_mm.safe_from_quarantine, False).label("safe_from_quarantine"),
            )
            .select_from(self._local_join())
            .where(media.c.user_id == user_id)
            .order_by(order.desc() if backwards else order.asc(), media.c.media_id)
            .offset(offset)
            .limit(limit)
        )
        count = sa.select(sa.func.count()).select_from(media).where(media.c.user_id == user_id)
        async with self._db.read() as conn:
            rows = (await conn.execute(select)).all()
            total = int((await conn.execute(count)).scalar_one())
        return [_record(r) for r in rows], total

    async def get_local_media(self, media_id: str) -> MediaRecord | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(
                        media,
                        _mm.quarantined_by,
                        sa.func.coalesce(_mm.safe_from_quarantine, False).label(
                            "safe_from_quarantine"
                        ),
                    )
                    .select_from(self._local_join())
                    .where(media.c.media_id == media_id)
                )
            ).first()
        return None if r is None else _record(r)

    async def room_media(self, room_id: str) -> list[tuple[str, str]]:
        """(server name, media ID) of every mxc URI in the room's events, in order."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(events.c.json)
                    .where(events.c.room_id == room_id, events.c.json.like("%mxc://%"))
                    .order_by(events.c.stream_ordering)
                )
            ).all()
        found: dict[tuple[str, str], None] = {}
        for r in rows:
            for m in _MXC.finditer(r.json):
                found[(m.group(1), m.group(2))] = None
        return list(found)

    async def user_media_ids(self, user_id: str) -> list[str]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(media.c.media_id)
                    .where(media.c.user_id == user_id)
                    .order_by(media.c.media_id)
                )
            ).all()
        return [r.media_id for r in rows]

    async def media_to_delete(
        self,
        before_ts: int,
        size_gt: int,
        keep_profiles: bool,
        *,
        by_last_access: bool = False,
        limit: int | None = None,
    ) -> list[str]:
        """Local media created (``by_last_access``: last downloaded, else created) before
        ``before_ts`` and larger than ``size_gt``, neither protected nor (with
        ``keep_profiles``) anyone's avatar, in a profile or a room; at most ``limit``."""
        # Last access, else creation, before before_ts: a range on each column's index
        # (a coalesce() of the two would read every row).
        old: sa.ColumnElement[bool] = (
            sa.or_(
                media.c.last_access_ts < before_ts,
                sa.and_(media.c.last_access_ts.is_(None), media.c.created_ts < before_ts),
            )
            if by_last_access
            else media.c.created_ts < before_ts
        )
        where = [
            old,
            sa.func.coalesce(media.c.size, 0) > size_gt,
            sa.func.coalesce(_mm.safe_from_quarantine, False).is_(False),
        ]
        if by_last_access:
            where.append(media.c.upload_ts.is_not(None))  # pending IDs lapse on their own
        # Sorted here, not in SQL: an ORDER BY media_id makes SQLite scan the primary key
        # instead of the two time indexes.
        query = sa.select(media.c.media_id).select_from(self._local_join()).where(*where)
        async with self._db.read() as conn:
            ids = sorted(r.media_id for r in (await conn.execute(query)).all())
            avatars: set[str] = set()
            if keep_profiles and ids:
                prefix = f"mxc://{self._server_name}/"
                for column in (profiles.c.avatar_url, room_memberships.c.avatar_url):
                    urls = (
                        await conn.execute(
                            sa.select(column).where(column.like(prefix + "%")).distinct()
                        )
                    ).scalars()
                    avatars.update(url[len(prefix) :] for url in urls)
        kept = [i for i in ids if i not in avatars]
        return kept if limit is None else kept[:limit]

    async def delete_local_media(self, media_ids: Sequence[str]) -> tuple[list[str], Orphans]:
        """Delete the rows of these media (with their quarantine marks), in one transaction;
        returns the IDs deleted, and the content and thumbnails no remaining media uses."""
        ids = list(dict.fromkeys(media_ids))
        if not ids:
            return [], Orphans([], [])
        async with self._db.write() as conn:
            rows = (
                await conn.execute(
                    sa.select(media.c.media_id, media.c.sha256).where(media.c.media_id.in_(ids))
                )
            ).all()
            deleted = [r.media_id for r in rows]
            if not deleted:
                return [], Orphans([], [])
            await conn.execute(sa.delete(media).where(media.c.media_id.in_(deleted)))
            await conn.execute(
                sa.delete(media_moderation).where(
                    _mm.media_origin == self._server_name, _mm.media_id.in_(deleted)
                )
            )
            hashes = sorted({r.sha256 for r in rows if r.sha256 is not None})
            found = await _orphans(conn, hashes)
        return deleted, found

    async def delete_remote_media_not_accessed_since(
        self, before_ts: int, limit: int
    ) -> tuple[int, Orphans]:
        """Delete up to ``limit`` rows of other servers' cached media that no client asked
        for since ``before_ts``, in one transaction; the count, and the content and
        thumbnails no remaining media uses."""
        r_m = remote_media.c
        async with self._db.write() as conn:
            rows = (
                await conn.execute(
                    sa.select(r_m.server_name, r_m.media_id, r_m.sha256)
                    .where(r_m.last_access_ts < before_ts)
                    .order_by(r_m.last_access_ts)
                    .limit(limit)
                )
            ).all()
            for r in rows:
                await conn.execute(
                    sa.delete(remote_media).where(
                        r_m.server_name == r.server_name, r_m.media_id == r.media_id
                    )
                )
            found = await _orphans(conn, sorted({r.sha256 for r in rows}))
        return len(rows), found

    # --- quarantine and protection -----------------------------------------------------------

    async def _mark(self, conn: Any, origin: str, media_id: str, **values: Any) -> None:
        row = {
            "media_origin": origin,
            "media_id": media_id,
            "quarantined_by": None,
            "quarantined_ts": None,
            "safe_from_quarantine": False,
        }
        current = (
            await conn.execute(
                sa.select(media_moderation).where(
                    _mm.media_origin == origin, _mm.media_id == media_id
                )
            )
        ).first()
        if current is not None:
            row.update(current._mapping)
        row.update(values)
        await conn.execute(
            self._db.upsert(media_moderation, row, keys=("media_origin", "media_id"))
        )

    async def quarantine(self, items: Sequence[tuple[str, str]], by: str, now_ms: int) -> int:
        """Quarantine each (server, media ID) but the protected ones; how many are now
        newly quarantined."""
        count = 0
        async with self._db.write() as conn:
            for origin, media_id in dict.fromkeys(items):
                current = (
                    await conn.execute(
                        sa.select(_mm.quarantined_by, _mm.safe_from_quarantine).where(
                            _mm.media_origin == origin, _mm.media_id == media_id
                        )
                    )
                ).first()
                if current is not None and (
                    current.safe_from_quarantine or current.quarantined_by is not None
                ):
                    continue
                await self._mark(conn, origin, media_id, quarantined_by=by, quarantined_ts=now_ms)
                count += 1
        return count

    async def unquarantine(self, origin: str, media_id: str) -> None:
        async with self._db.write() as conn:
            await self._mark(conn, origin, media_id, quarantined_by=None, quarantined_ts=None)

    async def set_protected(self, media_id: str, protected: bool) -> None:
        async with self._db.write() as conn:
            await self._mark(conn, self._server_name, media_id, safe_from_quarantine=protected)

    async def is_quarantined(self, server_name: str, media_id: str) -> bool:
        async with self._db.read() as conn:
            found = (
                await conn.execute(
                    sa.select(_mm.quarantined_by).where(
                        _mm.media_origin == server_name,
                        _mm.media_id == media_id,
                        _mm.quarantined_by.is_not(None),
                    )
                )
            ).first()
        return found is not None

    # --- statistics --------------------------------------------------------------------------

    async def user_media_statistics(
        self,
        offset: int,
        limit: int,
        order_by: str,
        backwards: bool,
        from_ts: int | None,
        until_ts: int | None,
        search_term: str | None,
    ) -> tuple[list[dict[str, Any]], int]:
        where: list[sa.ColumnElement[bool]] = []
        if from_ts is not None:
            where.append(media.c.created_ts >= from_ts)
        if until_ts is not None:
            where.append(media.c.created_ts <= until_ts)
        stats = (
            sa.select(
                media.c.user_id,
                sa.func.count().label("media_count"),
                sa.func.coalesce(sa.func.sum(media.c.size), 0).label("media_length"),
            )
            .where(*where)
            .group_by(media.c.user_id)
            .subquery("stats")
        )
        base = sa.select(
            stats.c.user_id, profiles.c.displayname, stats.c.media_count, stats.c.media_length
        ).select_from(stats.outerjoin(profiles, profiles.c.user_id == stats.c.user_id))
        if search_term is not None:
            pattern = "%" + search_term.lower().replace("%", "").replace("_", "") + "%"
            base = base.where(
                sa.or_(
                    sa.func.lower(stats.c.user_id).like(pattern),
                    sa.func.lower(profiles.c.displayname).like(pattern),
                )
            )
        order = {
            "user_id": stats.c.user_id,
            "displayname": profiles.c.displayname,
            "media_length": stats.c.media_length,
            "media_count": stats.c.media_count,
        }[order_by]
        page = base.order_by(order.desc() if backwards else order.asc(), stats.c.user_id)
        async with self._db.read() as conn:
            rows = (await conn.execute(page.offset(offset).limit(limit))).all()
            total = int(
                (
                    await conn.execute(sa.select(sa.func.count()).select_from(base.subquery()))
                ).scalar_one()
            )
        return [
            {
                "user_id": r.user_id,
                "displayname": r.displayname,
                "media_count": int(r.media_count),
                "media_length": int(r.media_length),
            }
            for r in rows
        ], total


async def _orphans(conn: Any, hashes: list[str]) -> Orphans:
    """Of the content ``hashes`` whose rows were just deleted, those no local or cached
    remote media uses any more, with their thumbnails (whose rows go too)."""
    if not hashes:
        return Orphans([], [])
    still_used = {
        r.sha256
        for r in (
            await conn.execute(
                sa.select(media.c.sha256).where(media.c.sha256.in_(hashes)).distinct()
            )
        ).all()
    }
    # Other servers' media cached here may have the same bytes (issue 18).
    still_used |= {
        r.sha256
        for r in (
            await conn.execute(
                sa.select(remote_media.c.sha256).where(remote_media.c.sha256.in_(hashes)).distinct()
            )
        ).all()
    }
    orphans = [h for h in hashes if h not in still_used]
    if not orphans:
        return Orphans([], [])
    t = media_thumbnails.c
    thumbs = [
        (r.sha256, int(r.width), int(r.height), r.method, bool(r.animated))
        for r in (
            await conn.execute(
                sa.select(t.sha256, t.width, t.height, t.method, t.animated).where(
                    t.sha256.in_(orphans)
                )
            )
        ).all()
    ]
    await conn.execute(sa.delete(media_thumbnails).where(t.sha256.in_(orphans)))
    return Orphans(orphans, thumbs)
