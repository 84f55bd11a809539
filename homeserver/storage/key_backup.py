"""Server-side key backups: versions per user and the encrypted session keys in each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database
from homeserver.storage.schema import room_key_backup_keys, room_key_backup_versions

# A new version races another creation for the same number at most this many times.
_CREATE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: JsonDict
    etag: int
    count: int


@dataclass(frozen=True, slots=True)
class RoomKey:
    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: JsonDict


@dataclass(frozen=True, slots=True)
class KeysUpdated:
    etag: int
    count: int


ShouldReplace = Callable[[RoomKey, RoomKey], bool]  # (stored, uploaded) -> replace?


class KeyBackupStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- versions --------------------------------------------------------------------------

    async def create_version(self, user_id: str, algorithm: str, auth_data: JsonDict) -> int:
        """A new version, numbered after every earlier one (deleted ones included)."""
        v = room_key_backup_versions
        for _ in range(_CREATE_ATTEMPTS):
            async with self._db.write() as conn:
                last = (
                    await conn.execute(
                        sa.select(sa.func.max(v.c.version)).where(v.c.user_id == user_id)
                    )
                ).scalar_one()
                version = int(last or 0) + 1
                inserted = await conn.execute(
                    self._db.insert_ignore(
                        v,
                        {
                            "user_id": user_id,
                            "version": version,
                            "algorithm": algorithm,
                            "auth_data": auth_data,
                            "etag": 0,
                            "deleted": False,
                        },
                        keys=("user_id", "version"),
                    )
                )
            if inserted.rowcount == 1:
                return version
        raise RuntimeError("could not allocate a key backup version")

    async def get_version(self, user_id: str, version: int | None) -> BackupVersion | None:
        """That version, or the latest one with ``None``; deleted versions are None."""
        async with self._db.read() as conn:
            return await self._get_version(conn, user_id, version)

    async def _get_version(
        self, conn: Connection, user_id: str, version: int | None
    ) -> BackupVersion | None:
        v = room_key_backup_versions
        query = sa.select(v).where(v.c.user_id == user_id, v.c.deleted.is_(False))
        if version is None:
            query = query.order_by(v.c.version.desc()).limit(1)
        else:
            query = query.where(v.c.version == version)
        row = (await conn.execute(query)).first()
        if row is None:
            return None
        count = await self._count(conn, user_id, int(row.version))
        return BackupVersion(int(row.version), row.algorithm, row.auth_data, int(row.etag), count)

    async def update_auth_data(self, user_id: str, version: int, auth_data: JsonDict) -> bool:
        v = room_key_backup_versions
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(v)
                .where(v.c.user_id == user_id, v.c.version == version, v.c.deleted.is_(False))
                .values(auth_data=auth_data)
            )
        return result.rowcount > 0

    async def delete_version(self, user_id: str, version: int) -> bool:
        """Mark it deleted and drop its keys; False if it never existed."""
        v = room_key_backup_versions
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(v)
                .where(v.c.user_id == user_id, v.c.version == version)
                .values(deleted=True)
            )
            if result.rowcount == 0:
                return False
            k = room_key_backup_keys
            await conn.execute(sa.delete(k).where(k.c.user_id == user_id, k.c.version == version))
        return True

    # --- keys ------------------------------------------------------------------------------

    async def put_keys(
        self, user_id: str, version: int, keys: Sequence[RoomKey], should_replace: ShouldReplace
    ) -> KeysUpdated | None:
        """Store keys in the version if it is still the latest; None if it is not.

        A session already stored is replaced only if ``should_replace(stored, uploaded)``;
        the etag moves when anything changed.
        """
        k = room_key_backup_keys
        async with self._db.write() as conn:
            latest = await self._get_version(conn, user_id, None)
            if latest is None or latest.version != version:
                return None
            stored: dict[tuple[str, str], RoomKey] = {}
            for room_id in sorted({key.room_id for key in keys}):
                sessions = [key.session_id for key in keys if key.room_id == room_id]
                rows = (
                    await conn.execute(
                        sa.select(k).where(
                            k.c.user_id == user_id,
                            k.c.version == version,
                            k.c.room_id == room_id,
                            k.c.session_id.in_(sessions),
                        )
                    )
                ).all()
                stored.update({(r.room_id, r.session_id): _room_key(r) for r in rows})
            changed = False
            for key in keys:
                old = stored.get((key.room_id, key.session_id))
                if old is not None and not should_replace(old, key):
                    continue
                await conn.execute(
                    self._db.upsert(
                        k,
                        {
                            "user_id": user_id,
                            "version": version,
                            "room_id": key.room_id,
                            "session_id": key.session_id,
                            "first_message_index": key.first_message_index,
                            "forwarded_count": key.forwarded_count,
                            "is_verified": key.is_verified,
                            "session_data": key.session_data,
                        },
                        keys=("user_id", "version", "room_id", "session_id"),
                    )
                )
                stored[(key.room_id, key.session_id)] = key
                changed = True
            etag = await self._bump_etag(conn, user_id, version) if changed else latest.etag
            return KeysUpdated(etag, await self._count(conn, user_id, version))

    async def get_keys(
        self, user_id: str, version: int, room_id: str | None = None, session_id: str | None = None
    ) -> list[RoomKey]:
        k = room_key_backup_keys
        query = sa.select(k).where(k.c.user_id == user_id, k.c.version == version)
        if room_id is not None:
            query = query.where(k.c.room_id == room_id)
        if session_id is not None:
            query = query.where(k.c.session_id == session_id)
        async with self._db.read() as conn:
            rows = (await conn.execute(query.order_by(k.c.room_id, k.c.session_id))).all()
        return [_room_key(r) for r in rows]

    async def delete_keys(
        self, user_id: str, version: int, room_id: str | None = None, session_id: str | None = None
    ) -> KeysUpdated | None:
        """None if the version does not exist (or was deleted)."""
        k = room_key_backup_keys
        async with self._db.write() as conn:
            if await self._get_version(conn, user_id, version) is None:
                return None
            stmt = sa.delete(k).where(k.c.user_id == user_id, k.c.version == version)
            if room_id is not None:
                stmt = stmt.where(k.c.room_id == room_id)
            if session_id is not None:
                stmt = stmt.where(k.c.session_id == session_id)
            await conn.execute(stmt)
            etag = await self._bump_etag(conn, user_id, version)
            return KeysUpdated(etag, await self._count(conn, user_id, version))

    async def _bump_etag(self, conn: Connection, user_id: str, version: int) -> int:
        v = room_key_backup_versions
        return int(
            (
                await conn.execute(
                    sa.update(v)
                    .where(v.c.user_id == user_id, v.c.version == version)
                    .values(etag=v.c.etag + 1)
                    .returning(v.c.etag)
                )
            ).scalar_one()
        )

    async def _count(self, conn: Connection, user_id: str, version: int) -> int:
        k = room_key_backup_keys
        return int(
            (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(k)
                    .where(k.c.user_id == user_id, k.c.version == version)
                )
            ).scalar_one()
        )


def _room_key(r: sa.Row[tuple[object, ...]]) -> RoomKey:
    return RoomKey(
        r.room_id,
        r.session_id,
        int(r.first_message_index),
        int(r.forwarded_count),
        bool(r.is_verified),
        r.session_data,
    )
