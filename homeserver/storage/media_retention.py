"""What media retention reads and writes (issue 22): the last access of local media, and
the leases of singleton jobs (``job_leases``), so that one worker runs each."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import job_leases, media


class MediaAccessStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_access(self, media_ids: Collection[str], now_ms: int) -> None:
        """These media were downloaded or thumbnailed at ``now_ms`` (one statement; a
        later time already written stays)."""
        if not media_ids:
            return
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(media)
                .where(
                    media.c.media_id.in_(sorted(media_ids)),
                    sa.or_(media.c.last_access_ts.is_(None), media.c.last_access_ts < now_ms),
                )
                .values(last_access_ts=now_ms)
            )


class JobLeaseStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(self, name: str, owner: str, now_ms: int, lease_ms: int) -> bool:
        """Take or renew the lease of job ``name`` until ``now_ms + lease_ms``; False while
        another owner holds it."""
        lease = job_leases.c
        until = now_ms + lease_ms
        async with self._db.write() as conn:
            taken = await conn.execute(
                sa.update(job_leases)
                .where(
                    lease.name == name,
                    sa.or_(lease.owner == owner, lease.until_ts <= now_ms),
                )
                .values(owner=owner, until_ts=until)
            )
            if taken.rowcount:
                return True
            inserted = await conn.execute(
                self._db.insert_ignore(
                    job_leases, {"name": name, "owner": owner, "until_ts": until}, ("name",)
                )
            )
            return bool(inserted.rowcount)

    async def release(self, name: str, owner: str) -> None:
        lease = job_leases.c
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(job_leases)
                .where(lease.name == name, lease.owner == owner)
                .values(until_ts=0)
            )
