"""Remote users' device lists, as their servers told us (m.device_list_update,
m.signing_key_update, /user/devices): devices, their keys, and the users' master and
self-signing keys."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.core import jsonutil
from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database
from homeserver.storage.schema import (
    remote_cross_signing_keys,
    remote_device_list_updates,
    remote_device_lists,
    remote_devices,
)

# Update stream IDs remembered per user (what a later update's prev_id may name): the newest
# ones; an update naming an older one makes a resync, which is always correct.
KEPT_UPDATE_IDS = 50


@dataclass(frozen=True, slots=True)
class RemoteDevice:
    device_id: str
    keys: JsonDict | None
    display_name: str | None


@dataclass(frozen=True, slots=True)
class RemoteDeviceList:
    user_id: str
    stream_id: int
    stale: bool
    updated_ts: int
    devices: tuple[RemoteDevice, ...]
    cross_signing: Mapping[str, JsonDict]


class RemoteDeviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_tracked(self, user_id: str) -> tuple[int, bool] | None:
        """The stream ID and staleness of a user's cached list; None if none is cached."""
        query = sa.select(remote_device_lists.c.stream_id, remote_device_lists.c.stale).where(
            remote_device_lists.c.user_id == user_id
        )
        async with self._db.read() as conn:
            r = (await conn.execute(query)).first()
        return None if r is None else (int(r.stream_id), bool(r.stale))

    async def known_update_ids(self, user_id: str, ids: Collection[int]) -> set[int]:
        """Which of ``ids`` are updates applied to the user's cached list."""
        if not ids:
            return set()
        query = sa.select(remote_device_list_updates.c.stream_id).where(
            remote_device_list_updates.c.user_id == user_id,
            remote_device_list_updates.c.stream_id.in_(list(ids)),
        )
        async with self._db.read() as conn:
            return {int(r.stream_id) for r in (await conn.execute(query)).all()}

    async def apply_update(
        self,
        user_id: str,
        stream_id: int,
        device_id: str,
        deleted: bool,
        keys: JsonDict | None,
        display_name: str | None,
        now_ms: int,
    ) -> None:
        """One device changed (or went), as the update numbered ``stream_id`` says."""
        async with self._db.write() as conn:
            if deleted:
                await conn.execute(
                    sa.delete(remote_devices).where(
                        remote_devices.c.user_id == user_id, remote_devices.c.device_id == device_id
                    )
                )
            else:
                await conn.execute(
                    self._db.upsert(
                        remote_devices,
                        {
                            "user_id": user_id,
                            "device_id": device_id,
                            "keys_json": jsonutil.dumps_str(keys) if keys is not None else None,
                            "display_name": display_name,
                        },
                        keys=("user_id", "device_id"),
                    )
                )
            await self._moved_to(conn, user_id, stream_id, now_ms, stale=False)

    async def replace_all(
        self,
        user_id: str,
        stream_id: int,
        devices: Sequence[RemoteDevice],
        cross_signing: Mapping[str, JsonDict],
        now_ms: int,
    ) -> None:
        """A resync: the user's whole list, as their server answered /user/devices."""
        async with self._db.write() as conn:
            await conn.execute(sa.delete(remote_devices).where(remote_devices.c.user_id == user_id))
            for device in devices:
                await conn.execute(
                    sa.insert(remote_devices).values(
                        user_id=user_id,
                        device_id=device.device_id,
                        keys_json=jsonutil.dumps_str(device.keys)
                        if device.keys is not None
                        else None,
                        display_name=device.display_name,
                    )
                )
            await conn.execute(
                sa.delete(remote_cross_signing_keys).where(
                    remote_cross_signing_keys.c.user_id == user_id
                )
            )
            for key_type, key in cross_signing.items():
                await conn.execute(
                    sa.insert(remote_cross_signing_keys).values(
                        user_id=user_id, key_type=key_type, key_json=jsonutil.dumps_str(key)
                    )
                )
            await conn.execute(
                sa.delete(remote_device_list_updates).where(
                    remote_device_list_updates.c.user_id == user_id
                )
            )
            await self._moved_to(conn, user_id, stream_id, now_ms, stale=False)

    async def put_cross_signing(self, user_id: str, keys: Mapping[str, JsonDict]) -> None:
        async with self._db.write() as conn:
            for key_type, key in keys.items():
                await conn.execute(
                    self._db.upsert(
                        remote_cross_signing_keys,
                        {
                            "user_id": user_id,
                            "key_type": key_type,
                            "key_json": jsonutil.dumps_str(key),
                        },
                        keys=("user_id", "key_type"),
                    )
                )

    async def mark_stale(self, user_id: str, now_ms: int, retry_in_ms: int) -> None:
        """The cached list missed an update and could not be fetched again: not current,
        and fetched again in ``retry_in_ms``."""
        async with self._db.write() as conn:
            await conn.execute(
                self._db.upsert(
                    remote_device_lists,
                    {
                        "user_id": user_id,
                        "stream_id": 0,
                        "stale": True,
                        "updated_ts": now_ms,
                        "resync_interval_ms": retry_in_ms,
                        "resync_at_ts": now_ms + retry_in_ms,
                    },
                    keys=("user_id",),
                    update=("stale", "updated_ts", "resync_interval_ms", "resync_at_ts"),
                )
            )

    async def get_resync_interval(self, user_id: str) -> int:
        """The back-off of a stale list's resync (0: not stale, or never retried)."""
        query = sa.select(remote_device_lists.c.resync_interval_ms).where(
            remote_device_lists.c.user_id == user_id, remote_device_lists.c.stale.is_(True)
        )
        async with self._db.read() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        return 0 if found is None else int(found)

    async def get_stale(self, user_ids: Collection[str]) -> list[str]:
        """Which of these users' cached lists are stale."""
        if not user_ids:
            return []
        query = sa.select(remote_device_lists.c.user_id).where(
            remote_device_lists.c.user_id.in_(list(user_ids)),
            remote_device_lists.c.stale.is_(True),
        )
        async with self._db.read() as conn:
            return sorted(r.user_id for r in (await conn.execute(query)).all())

    async def due_resyncs(self, now_ms: int, limit: int) -> list[str]:
        """Users whose stale list is due to be fetched again, the longest waiting first."""
        query = (
            sa.select(remote_device_lists.c.user_id)
            .where(
                remote_device_lists.c.resync_at_ts <= now_ms,
                remote_device_lists.c.stale.is_(True),
            )
            .order_by(remote_device_lists.c.resync_at_ts, remote_device_lists.c.user_id)
            .limit(limit)
        )
        async with self._db.read() as conn:
            return [r.user_id for r in (await conn.execute(query)).all()]

    async def stop_resyncs(self, user_id: str) -> None:
        """No more timed resyncs of this user's list (nobody here shares a room with them:
        their server stops sending updates, and /keys/query asks it)."""
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(remote_device_lists)
                .where(remote_device_lists.c.user_id == user_id)
                .values(resync_at_ts=None)
            )

    async def get_lists(self, user_ids: Collection[str]) -> dict[str, RemoteDeviceList]:
        """The cached lists of these users that are current (not stale)."""
        if not user_ids:
            return {}
        wanted = list(user_ids)
        async with self._db.read() as conn:
            heads = (
                await conn.execute(
                    sa.select(remote_device_lists).where(
                        remote_device_lists.c.user_id.in_(wanted),
                        remote_device_lists.c.stale.is_(False),
                    )
                )
            ).all()
            current = [r.user_id for r in heads]
            if not current:
                return {}
            devices = (
                await conn.execute(
                    sa.select(remote_devices)
                    .where(remote_devices.c.user_id.in_(current))
                    .order_by(remote_devices.c.user_id, remote_devices.c.device_id)
                )
            ).all()
            cross = (
                await conn.execute(
                    sa.select(remote_cross_signing_keys).where(
                        remote_cross_signing_keys.c.user_id.in_(current)
                    )
                )
            ).all()
        by_user: dict[str, list[RemoteDevice]] = {}
        for d in devices:
            by_user.setdefault(d.user_id, []).append(
                RemoteDevice(
                    d.device_id,
                    jsonutil.loads(d.keys_json) if d.keys_json else None,
                    d.display_name,
                )
            )
        keys: dict[str, dict[str, JsonDict]] = {}
        for k in cross:
            keys.setdefault(k.user_id, {})[k.key_type] = jsonutil.loads(k.key_json)
        return {
            r.user_id: RemoteDeviceList(
                r.user_id,
                int(r.stream_id),
                bool(r.stale),
                int(r.updated_ts),
                tuple(by_user.get(r.user_id, ())),
                keys.get(r.user_id, {}),
            )
            for r in heads
        }

    async def _moved_to(
        self, conn: Connection, user_id: str, stream_id: int, now_ms: int, *, stale: bool
    ) -> None:
        await conn.execute(
            self._db.upsert(
                remote_device_lists,
                {
                    "user_id": user_id,
                    "stream_id": stream_id,
                    "stale": stale,
                    "updated_ts": now_ms,
                    "resync_interval_ms": 0,
                    "resync_at_ts": None,
                },
                keys=("user_id",),
            )
        )
        await conn.execute(
            self._db.insert_ignore(
                remote_device_list_updates,
                {"user_id": user_id, "stream_id": stream_id},
                ("user_id", "stream_id"),
            )
        )
        oldest_kept = (
            sa.select(remote_device_list_updates.c.stream_id)
            .where(remote_device_list_updates.c.user_id == user_id)
            .order_by(remote_device_list_updates.c.stream_id.desc())
            .offset(KEPT_UPDATE_IDS - 1)
            .limit(1)
            .scalar_subquery()
        )
        await conn.execute(
            sa.delete(remote_device_list_updates).where(
                remote_device_list_updates.c.user_id == user_id,
                remote_device_list_updates.c.stream_id < oldest_kept,
            )
        )
