"""Other servers' signing keys, as fetched from them or from a notary."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import server_keys


@dataclass(frozen=True, slots=True)
class StoredServerKey:
    server_name: str
    key_id: str
    verify_key: str  # unpadded base64
    valid_until_ts: int
    expired_ts: int | None
    fetched_ts: int
    from_server: str
    key_json: str  # the origin-signed key response that carried it


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def store_keys(self, keys: Sequence[StoredServerKey]) -> None:
        """Store or replace each key (one key response's keys commit together)."""
        if not keys:
            return
        async with self._db.write() as conn:
            for key in keys:
                row = {
                    "server_name": key.server_name,
                    "key_id": key.key_id,
                    "verify_key": key.verify_key,
                    "valid_until_ts": key.valid_until_ts,
                    "expired_ts": key.expired_ts,
                    "fetched_ts": key.fetched_ts,
                    "from_server": key.from_server,
                    "key_json": key.key_json,
                }
                await conn.execute(
                    self._db.upsert(server_keys, row, keys=("server_name", "key_id"))
                )

    async def get_keys(
        self, server_name: str, key_ids: Collection[str] | None = None
    ) -> list[StoredServerKey]:
        """The stored keys of ``server_name`` (only ``key_ids`` when given)."""
        query = sa.select(server_keys).where(server_keys.c.server_name == server_name)
        if key_ids is not None:
            if not key_ids:
                return []
            query = query.where(server_keys.c.key_id.in_(list(key_ids)))
        async with self._db.read() as conn:
            rows = (await conn.execute(query.order_by(server_keys.c.key_id))).all()
        return [
            StoredServerKey(
                server_name=row.server_name,
                key_id=row.key_id,
                verify_key=row.verify_key,
                valid_until_ts=int(row.valid_until_ts),
                expired_ts=None if row.expired_ts is None else int(row.expired_ts),
                fetched_ts=int(row.fetched_ts),
                from_server=row.from_server,
                key_json=row.key_json,
            )
            for row in rows
        ]
