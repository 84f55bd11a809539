"""What the admin API reads about the server's background jobs (issue 22): the leases of
singleton jobs (``job_leases``), and the depth and back-off of the queues that workers drain
(pushers, application services, federation destinations). Read only."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.schema import (
    appservice_state,
    appservice_txns,
    federation_destinations,
    federation_outbound_edus,
    federation_outbound_pdus,
    job_leases,
    push_queue,
    pushers,
)


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    owner: str
    until_ts: int


@dataclass(frozen=True, slots=True)
class PusherQueues:
    pushers: int
    queued: int  # notifications waiting, all pushers
    pushers_with_queue: int
    backing_off: int  # pushers whose last attempt failed
    next_due_ts: int | None  # the earliest a queued notification may go
    oldest_event_ts: int | None


@dataclass(frozen=True, slots=True)
class ServiceQueue:
    service_id: str
    queued_txns: int
    oldest_txn_ts: int | None
    last_txn_id: int
    attempts: int
    next_attempt_ts: int
    lease_owner: str | None
    lease_until_ts: int


@dataclass(frozen=True, slots=True)
class FederationQueues:
    destinations: int
    backing_off: int
    catching_up: int
    queued_pdus: int
    queued_edus: int
    next_retry_ts: int | None  # the earliest retry of a destination backing off
    oldest_edu_ts: int | None


def _int(value: object) -> int:
    return 0 if value is None else int(str(value))


def _opt(value: object) -> int | None:
    return None if value is None else int(str(value))


class AdminJobsStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def leases(self) -> list[Lease]:
        lease = job_leases.c
        async with self._db.read() as conn:
            rows = (await conn.execute(sa.select(job_leases).order_by(lease.name))).all()
        return [Lease(r.name, r.owner, int(r.until_ts)) for r in rows]

    async def pusher_queues(self) -> PusherQueues:
        q = push_queue.c
        p = pushers.c
        async with self._db.read() as conn:
            counted = (
                await conn.execute(
                    sa.select(
                        sa.func.count(),
                        sa.func.count(sa.distinct(q.pusher_id)),
                        sa.func.min(q.due_ts),
                        sa.func.min(q.event_ts),
                    )
                )
            ).one()
            owned = (
                await conn.execute(
                    sa.select(
                        sa.func.count(),
                        sa.func.coalesce(sa.func.sum(sa.case((p.attempts > 0, 1), else_=0)), 0),
                    )
                )
            ).one()
        return PusherQueues(
            pushers=_int(owned[0]),
            queued=_int(counted[0]),
            pushers_with_queue=_int(counted[1]),
            backing_off=_int(owned[1]),
            next_due_ts=_opt(counted[2]),
            oldest_event_ts=_opt(counted[3]),
        )

    async def service_queues(self) -> list[ServiceQueue]:
        s = appservice_state.c
        t = appservice_txns.c
        pending = (
            sa.select(
                t.service_id,
                sa.func.count().label("queued"),
                sa.func.min(t.created_ts).label("oldest"),
            )
            .group_by(t.service_id)
            .subquery()
        )
        query = (
            sa.select(
                s.service_id,
                s.last_txn_id,
                s.attempts,
                s.next_attempt_ts,
                s.lease_owner,
                s.lease_until_ts,
                pending.c.queued,
                pending.c.oldest,
            )
            .select_from(appservice_state.outerjoin(pending, pending.c.service_id == s.service_id))
            .order_by(s.service_id)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            ServiceQueue(
                service_id=r.service_id,
                queued_txns=_int(r.queued),
                oldest_txn_ts=_opt(r.oldest),
                last_txn_id=int(r.last_txn_id),
                attempts=int(r.attempts),
                next_attempt_ts=int(r.next_attempt_ts),
                lease_owner=r.lease_owner,
                lease_until_ts=int(r.lease_until_ts),
            )
            for r in rows
        ]

    async def federation_queues(self) -> FederationQueues:
        d = federation_destinations.c
        async with self._db.read() as conn:
            dests = (
                await conn.execute(
                    sa.select(
                        sa.func.count(),
                        sa.func.coalesce(
                            sa.func.sum(sa.case((d.retry_interval_ms > 0, 1), else_=0)), 0
                        ),
                        sa.func.coalesce(
                            sa.func.sum(sa.case((d.catching_up.is_(True), 1), else_=0)), 0
                        ),
                        sa.func.min(sa.case((d.retry_interval_ms > 0, d.retry_at_ts), else_=None)),
                    )
                )
            ).one()
            pdus = (
                await conn.execute(sa.select(sa.func.count()).select_from(federation_outbound_pdus))
            ).scalar_one()
            edus = (
                await conn.execute(
                    sa.select(sa.func.count(), sa.func.min(federation_outbound_edus.c.queued_ts))
                )
            ).one()
        return FederationQueues(
            destinations=_int(dests[0]),
            backing_off=_int(dests[1]),
            catching_up=_int(dests[2]),
            queued_pdus=_int(pdus),
            queued_edus=_int(edus[0]),
            next_retry_ts=_opt(dests[3]),
            oldest_edu_ts=_opt(edus[1]),
        )
