"""Leases of singleton jobs (``job_leases``): the job that must run on one worker at a time
(pushers, presence timeouts, pruning, media retention, the federation sender) runs where its
lease is held; a holder renews it, and a lease not renewed lapses for another worker to take.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from homeserver.storage.database import Database
from homeserver.storage.schema import job_leases

# 1970-01-01 as a Julian day (SQLite's clock).
_UNIX_EPOCH_JULIAN_DAY = 2440587.5
_MS_PER_DAY = 86_400_000


class JobLeaseStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _db_now_ms(self) -> sa.ColumnElement[int]:
        """The database's clock, in ms: every worker's lease times come from one clock, so
        workers whose clocks disagree still agree on who holds a lease."""
        if self._db.is_sqlite:
            days = sa.func.julianday("now") - _UNIX_EPOCH_JULIAN_DAY
            return sa.cast(days * _MS_PER_DAY, sa.BigInteger)
        seconds = sa.extract("epoch", sa.func.clock_timestamp())
        return sa.cast(sa.func.floor(seconds * 1000), sa.BigInteger)

    async def claim(self, name: str, owner: str, now_ms: int, lease_ms: int) -> bool:
        """Take or renew the lease of job ``name`` until ``now_ms + lease_ms``; False while
        another owner holds it."""
        return await self._claim(name, owner, sa.literal(now_ms, sa.BigInteger), lease_ms)

    async def hold(self, name: str, owner: str, lease_ms: int) -> bool:
        """``claim`` by the database's clock."""
        return name in await self.hold_many([name], owner, lease_ms)

    async def hold_many(self, names: Collection[str], owner: str, lease_ms: int) -> set[str]:
        """Renew ``owner``'s leases among ``names`` and take those free or lapsed, until the
        database's now + ``lease_ms``, in one transaction; the names ``owner`` holds now."""
        if not names:
            return set()
        lease = job_leases.c
        now = self._db_now_ms()
        insert = sqlite.insert(job_leases) if self._db.is_sqlite else postgresql.insert(job_leases)
        async with self._db.write() as conn:
            # Jobs never run before have no row yet: the first to come takes it.
            await conn.execute(
                insert.values(
                    [{"name": n, "owner": owner, "until_ts": now + lease_ms} for n in names]
                ).on_conflict_do_nothing(index_elements=["name"])
            )
            held = await conn.execute(
                sa.update(job_leases)
                .where(
                    lease.name.in_(sorted(names)),
                    sa.or_(lease.owner == owner, lease.until_ts <= now),
                )
                .values(owner=owner, until_ts=now + lease_ms)
                .returning(lease.name)
            )
            return {str(name) for (name,) in held.all()}

    async def release_many(self, names: Collection[str], owner: str) -> None:
        lease = job_leases.c
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(job_leases)
                .where(lease.name.in_(sorted(names)), lease.owner == owner)
                .values(until_ts=0)
            )

    async def _claim(
        self, name: str, owner: str, now: sa.ColumnElement[int], lease_ms: int
    ) -> bool:
        lease = job_leases.c
        take = (
            sa.update(job_leases)
            .where(lease.name == name, sa.or_(lease.owner == owner, lease.until_ts <= now))
            .values(owner=owner, until_ts=now + lease_ms)
        )
        async with self._db.write() as conn:
            taken = await conn.execute(take)
            if taken.rowcount:
                return True
            insert = (
                sqlite.insert(job_leases) if self._db.is_sqlite else postgresql.insert(job_leases)
            )
            inserted = await conn.execute(
                insert.values(
                    name=name, owner=owner, until_ts=now + lease_ms
                ).on_conflict_do_nothing(index_elements=["name"])
            )
            if inserted.rowcount:
                return True
            # A concurrent first claim inserted the row meanwhile (PostgreSQL: committed, so
            # this statement sees it): it may be this owner's own, or lapsed already.
            return bool((await conn.execute(take)).rowcount)

    async def release(self, name: str, owner: str) -> None:
        """Give the lease up (a worker stopping), so that another need not wait it out."""
        lease = job_leases.c
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(job_leases)
                .where(lease.name == name, lease.owner == owner)
                .values(until_ts=0)
            )

    async def holders(self) -> dict[str, str]:
        """Every lease held now: job name -> owner."""
        lease = job_leases.c
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(lease.name, lease.owner).where(lease.until_ts > self._db_now_ms())
                )
            ).all()
        return {str(name): str(owner) for name, owner in rows}

    async def holder(self, name: str) -> str | None:
        """Who holds the lease of ``name`` now (None: nobody, or it lapsed)."""
        lease = job_leases.c
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(lease.owner).where(
                        lease.name == name, lease.until_ts > self._db_now_ms()
                    )
                )
            ).first()
        return None if row is None else str(row[0])
