"""End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys and
the signatures users upload for each other's keys.

Keys are stored as the canonical JSON the client signed, so what /keys/query returns is
byte-for-byte what was signed (plus ``unsigned``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from canonicaljson import encode_canonical_json

from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.schema import (
    devices,
    e2e_cross_signing_keys,
    e2e_device_keys,
    e2e_fallback_keys,
    e2e_one_time_keys,
    e2e_signatures,
)


def canonical(value: Any) -> str:
    return encode_canonical_json(value).decode()


# Read by every sync: built once.
_COUNT_ONE_TIME_KEYS = prepared(
    sa.select(e2e_one_time_keys.c.algorithm, sa.func.count())
    .where(
        e2e_one_time_keys.c.user_id == sa.bindparam("user_id"),
        e2e_one_time_keys.c.device_id == sa.bindparam("device_id"),
    )
    .group_by(e2e_one_time_keys.c.algorithm)
)
# Both in one round trip: (True, algorithm, count) per one-time key algorithm, and
# (False, algorithm, 0) per unused fallback key.
_KEY_COUNTS = prepared(
    sa.union_all(
        sa.select(
            sa.literal(True).label("one_time"),
            e2e_one_time_keys.c.algorithm,
            sa.func.count().label("n"),
        )
        .where(
            e2e_one_time_keys.c.user_id == sa.bindparam("user_id"),
            e2e_one_time_keys.c.device_id == sa.bindparam("device_id"),
        )
        .group_by(e2e_one_time_keys.c.algorithm),
        sa.select(
            sa.literal(False).label("one_time"),
            e2e_fallback_keys.c.algorithm,
            sa.literal(0).label("n"),
        ).where(
            e2e_fallback_keys.c.user_id == sa.bindparam("user_id"),
            e2e_fallback_keys.c.device_id == sa.bindparam("device_id"),
            e2e_fallback_keys.c.used.is_(False),
        ),
    )
)


@dataclass(frozen=True, slots=True)
class NewKey:
    """A one-time or fallback key to store: ``algorithm:key_id`` and its value."""

    algorithm: str
    key_id: str
    key: Any  # a string, or a signed key object


@dataclass(frozen=True, slots=True)
class UploadResult:
    """What an upload did; ``conflict`` names a one-time key ID that already holds another key
    (nothing was stored then), ``device_missing`` that the device was deleted meanwhile."""

    device_keys_changed: bool = False
    conflict: str | None = None
    device_missing: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    # The one-time-keys stream's position, when one-time or fallback keys came.
    keys_position: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    user_id: str
    device_id: str
    keys: JsonDict
    display_name: str | None


@dataclass(frozen=True, slots=True)
class CrossSigningKey:
    user_id: str
    key_type: str  # master, self_signing, user_signing
    public_key: str
    key: JsonDict


@dataclass(frozen=True, slots=True)
class Signature:
    target_user_id: str
    target_key_id: str  # a device ID, or a cross-signing public key
    signer_user_id: str
    signer_key_id: str  # ed25519:<device ID or public key>
    signature: str


@dataclass(frozen=True, slots=True)
class ClaimedKey:
    user_id: str
    device_id: str
    key_id: str  # algorithm:key_id
    key: Any


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    user_id: str
    device_id: str
    algorithm: str


class _Conflict(Exception):
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id


class E2eKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- upload ----------------------------------------------------------------------------

    async def upload(
        self,
        user_id: str,
        device_id: str,
        device_keys: JsonDict | None,
        one_time_keys: Sequence[NewKey],
        fallback_keys: Sequence[NewKey],
    ) -> UploadResult:
        """Store what one /keys/upload carries, all or nothing, in one transaction.

        A one-time key ID already stored with the same content is skipped (a retried
        upload); with other content the whole upload is refused (``conflict``). A fallback
        key replaces the device's one of its algorithm and is unused again, unless it is
        the very same key.
        """
        try:
            async with self._db.write() as conn:
                exists = (
                    await conn.execute(
                        sa.select(devices.c.device_id).where(
                            devices.c.user_id == user_id, devices.c.device_id == device_id
                        )
                    )
                ).first()
                if exists is None:
                    return UploadResult(device_missing=True)
                changed = False
                if device_keys is not None:
                    changed = await self._put_device_keys(
                        conn, user_id, device_id, canonical(device_keys)
                    )
                await self._add_one_time_keys(conn, user_id, device_id, one_time_keys)
                for key in fallback_keys:
                    await self._put_fallback_key(conn, user_id, device_id, key)
                counts = await self._count(conn, user_id, device_id)
                position = (
                    await self._db.next_position(conn, Stream.ONE_TIME_KEYS)
                    if one_time_keys or fallback_keys
                    else None
                )
        except _Conflict as e:
            return UploadResult(conflict=e.key_id)
        return UploadResult(device_keys_changed=changed, counts=counts, keys_position=position)

    async def _put_device_keys(
        self, conn: Connection, user_id: str, device_id: str, key_json: str
    ) -> bool:
        where = (e2e_device_keys.c.user_id == user_id, e2e_device_keys.c.device_id == device_id)
        old = (await conn.execute(sa.select(e2e_device_keys.c.key_json).where(*where))).first()
        if old is not None and old.key_json == key_json:
            return False
        await conn.execute(
            self._db.upsert(
                e2e_device_keys,
                {"user_id": user_id, "device_id": device_id, "key_json": key_json},
                keys=("user_id", "device_id"),
            )
        )
        if old is not None:
            # Signatures made over the device's former keys no longer sign anything.
            await conn.execute(
                sa.delete(e2e_signatures).where(
                    e2e_signatures.c.target_user_id == user_id,
                    e2e_signatures.c.target_key_id == device_id,
                )
            )
        return True

    async def _add_one_time_keys(
        self, conn: Connection, user_id: str, device_id: str, keys: Sequence[NewKey]
    ) -> None:
        if not keys:
            return
        t = e2e_one_time_keys
        existing: dict[tuple[str, str], str] = {}
        for algorithm in {k.algorithm for k in keys}:
            ids = [k.key_id for k in keys if k.algorithm == algorithm]
            rows = (
                await conn.execute(
                    sa.select(t.c.key_id, t.c.key_json).where(
                        t.c.user_id == user_id,
                        t.c.device_id == device_id,
                        t.c.algorithm == algorithm,
                        t.c.key_id.in_(ids),
                    )
                )
            ).all()
            existing.update({(algorithm, r.key_id): r.key_json for r in rows})
        new_rows = []
        for key in keys:
            key_json = canonical(key.key)
            old = existing.get((key.algorithm, key.key_id))
            if old is None:
                new_rows.append(
                    {
                        "user_id": user_id,
                        "device_id": device_id,
                        "algorithm": key.algorithm,
                        "key_id": key.key_id,
                        "key_json": key_json,
                    }
                )
                existing[(key.algorithm, key.key_id)] = key_json
            elif old != key_json:
                raise _Conflict(f"{key.algorithm}:{key.key_id}")
        if new_rows:
            await conn.execute(sa.insert(t), new_rows)

    async def _put_fallback_key(
        self, conn: Connection, user_id: str, device_id: str, key: NewKey
    ) -> None:
        t = e2e_fallback_keys
        key_json = canonical(key.key)
        where = (t.c.user_id == user_id, t.c.device_id == device_id, t.c.algorithm == key.algorithm)
        old = (await conn.execute(sa.select(t.c.key_id, t.c.key_json).where(*where))).first()
        if old is not None and old.key_id == key.key_id and old.key_json == key_json:
            return  # the same key again: it stays used if it was
        await conn.execute(
            self._db.upsert(
                t,
                {
                    "user_id": user_id,
                    "device_id": device_id,
                    "algorithm": key.algorithm,
                    "key_id": key.key_id,
                    "key_json": key_json,
                    "used": False,
                },
                keys=("user_id", "device_id", "algorithm"),
            )
        )

    async def _count(self, conn: Connection, user_id: str, device_id: str) -> dict[str, int]:
        rows = (
            await conn.execute(_COUNT_ONE_TIME_KEYS, {"user_id": user_id, "device_id": device_id})
        ).all()
        return {r[0]: int(r[1]) for r in rows}

    # --- counts for sync -------------------------------------------------------------------

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        """For every sync: the device's one-time key counts by algorithm, and the algorithms
        of its unused fallback keys (sorted), in one statement."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(_KEY_COUNTS, {"user_id": user_id, "device_id": device_id})
            ).all()
        counts = {r.algorithm: int(r.n) for r in rows if r.one_time}
        return counts, sorted(r.algorithm for r in rows if not r.one_time)

    # --- query -----------------------------------------------------------------------------

    async def get_device_keys(self, wanted: Mapping[str, Sequence[str]]) -> list[DeviceKeys]:
        """Device keys of ``{user_id: [device_id, ...]}``; an empty list means all devices.

        Only devices that still exist and have uploaded keys.
        """
        if not wanted:
            return []
        conditions = []
        for user_id, device_ids in wanted.items():
            if device_ids:
                conditions.append(
                    sa.and_(
                        e2e_device_keys.c.user_id == user_id,
                        e2e_device_keys.c.device_id.in_(list(device_ids)),
                    )
                )
            else:
                conditions.append(e2e_device_keys.c.user_id == user_id)
        query = (
            sa.select(
                e2e_device_keys.c.user_id,
                e2e_device_keys.c.device_id,
                e2e_device_keys.c.key_json,
                devices.c.display_name,
            )
            .join(
                devices,
                sa.and_(
                    devices.c.user_id == e2e_device_keys.c.user_id,
                    devices.c.device_id == e2e_device_keys.c.device_id,
                ),
            )
            .where(sa.or_(*conditions))
            .order_by(e2e_device_keys.c.user_id, e2e_device_keys.c.device_id)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            DeviceKeys(r.user_id, r.device_id, json.loads(r.key_json), r.display_name) for r in rows
        ]

    async def get_cross_signing_keys(
        self, user_ids: Iterable[str]
    ) -> dict[str, dict[str, CrossSigningKey]]:
        """``{user_id: {key_type: key}}``."""
        ids = list(user_ids)
        if not ids:
            return {}
        t = e2e_cross_signing_keys
        async with self._db.read() as conn:
            rows = (await conn.execute(sa.select(t).where(t.c.user_id.in_(ids)))).all()
        out: dict[str, dict[str, CrossSigningKey]] = {}
        for r in rows:
            out.setdefault(r.user_id, {})[r.key_type] = CrossSigningKey(
                r.user_id, r.key_type, r.public_key, json.loads(r.key_json)
            )
        return out

    async def get_signatures(self, target_user_ids: Iterable[str]) -> list[Signature]:
        ids = list(target_user_ids)
        if not ids:
            return []
        t = e2e_signatures
        async with self._db.read() as conn:
            rows = (await conn.execute(sa.select(t).where(t.c.target_user_id.in_(ids)))).all()
        return [
            Signature(
                r.target_user_id, r.target_key_id, r.signer_user_id, r.signer_key_id, r.signature
            )
            for r in rows
        ]

    # --- claim -----------------------------------------------------------------------------

    async def claim(self, requests: Sequence[ClaimRequest]) -> tuple[list[ClaimedKey], int | None]:
        """Take one key per request, in one write transaction; with the one-time-keys
        stream's new position when any key was taken.

        A one-time key is deleted as it is returned, so it goes to one claimer only: the row
        is chosen and deleted in one statement, and a row another transaction has just
        locked is skipped rather than waited for (PostgreSQL; SQLite has one writer at a
        time). Without one, the fallback key is returned and marked used.
        """
        t = e2e_one_time_keys
        f = e2e_fallback_keys
        claimed: list[ClaimedKey] = []
        async with self._db.write() as conn:
            for req in requests:
                oldest = (
                    sa.select(t.c.id)
                    .where(
                        t.c.user_id == req.user_id,
                        t.c.device_id == req.device_id,
                        t.c.algorithm == req.algorithm,
                    )
                    .order_by(t.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                    .scalar_subquery()
                )
                row = (
                    await conn.execute(
                        sa.delete(t).where(t.c.id == oldest).returning(t.c.key_id, t.c.key_json)
                    )
                ).first()
                if row is None:
                    where = (
                        f.c.user_id == req.user_id,
                        f.c.device_id == req.device_id,
                        f.c.algorithm == req.algorithm,
                    )
                    row = (
                        await conn.execute(
                            sa.update(f)
                            .where(*where)
                            .values(used=True)
                            .returning(f.c.key_id, f.c.key_json)
                        )
                    ).first()
                if row is not None:
                    claimed.append(
                        ClaimedKey(
                            req.user_id,
                            req.device_id,
                            f"{req.algorithm}:{row.key_id}",
                            json.loads(row.key_json),
                        )
                    )
            position = await self._db.next_position(conn, Stream.ONE_TIME_KEYS) if claimed else None
        return claimed, position

    # --- cross-signing ---------------------------------------------------------------------

    async def set_cross_signing_keys(
        self, user_id: str, keys: Mapping[str, tuple[str, JsonDict]], *, expected_master: str | None
    ) -> bool:
        """Store ``{key_type: (public_key, key)}``, replacing the user's keys of those types.

        Only if the user's master public key is still ``expected_master`` (None: none yet),
        so that two uploads that each saw no master key cannot both skip authentication.
        """
        t = e2e_cross_signing_keys
        async with self._db.write() as conn:
            current = (
                await conn.execute(
                    sa.select(t.c.public_key).where(
                        t.c.user_id == user_id, t.c.key_type == "master"
                    )
                )
            ).first()
            if (current.public_key if current is not None else None) != expected_master:
                return False
            for key_type, (public_key, key) in keys.items():
                await conn.execute(
                    self._db.upsert(
                        t,
                        {
                            "user_id": user_id,
                            "key_type": key_type,
                            "public_key": public_key,
                            "key_json": canonical(key),
                        },
                        keys=("user_id", "key_type"),
                    )
                )
        return True

    async def get_device_ids(self, user_id: str) -> set[str]:
        """All devices of the user, with keys or not (a cross-signing key may not use one)."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(devices.c.device_id).where(devices.c.user_id == user_id)
                )
            ).all()
        return {r.device_id for r in rows}

    async def add_signatures(self, signatures: Sequence[Signature]) -> None:
        if not signatures:
            return
        async with self._db.write() as conn:
            for s in signatures:
                await conn.execute(
                    self._db.upsert(
                        e2e_signatures,
                        {
                            "target_user_id": s.target_user_id,
                            "target_key_id": s.target_key_id,
                            "signer_user_id": s.signer_user_id,
                            "signer_key_id": s.signer_key_id,
                            "signature": s.signature,
                        },
                        keys=("target_user_id", "target_key_id", "signer_user_id", "signer_key_id"),
                    )
                )

    # --- deleted devices -------------------------------------------------------------------

    async def delete_for_devices(self, user_id: str, device_ids: Sequence[str]) -> int | None:
        """A deleted device takes its keys and the signatures made by or for it along; the
        one-time-keys stream's new position (a device created again with the same ID starts
        from no keys, not from counts kept for the old one)."""
        if not device_ids:
            return None
        ids = list(device_ids)
        async with self._db.write() as conn:
            position = await self._db.next_position(conn, Stream.ONE_TIME_KEYS)
            for table in (e2e_device_keys, e2e_one_time_keys, e2e_fallback_keys):
                await conn.execute(
                    sa.delete(table).where(table.c.user_id == user_id, table.c.device_id.in_(ids))
                )
            s = e2e_signatures
            await conn.execute(
                sa.delete(s).where(s.c.target_user_id == user_id, s.c.target_key_id.in_(ids))
            )
            await conn.execute(
                sa.delete(s).where(
                    s.c.signer_user_id == user_id,
                    s.c.signer_key_id.in_([f"ed25519:{d}" for d in ids]),
                )
            )
        return position
