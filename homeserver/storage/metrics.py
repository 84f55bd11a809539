"""What a metrics scrape reads from the database: the depth of the pushers' queues, of the
application services' transactions and of the federation sender's queues."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.storage.database import Database
from homeserver.storage.schema import (
    appservice_state,
    appservice_txns,
    federation_destinations,
    federation_outbound_edus,
    federation_outbound_pdus,
    push_queue,
    pushers,
)


@dataclass(frozen=True, slots=True)
class PusherQueues:
    """The queued pushes of one kind of pusher (http, email)."""

    kind: str
    queued: int  # rows waiting, all pushers of the kind
    pushers: int  # pushers with at least one
    deepest: int  # the longest queue of one pusher
    backing_off: int  # pushers whose last attempts failed (waiting to try again)


@dataclass(frozen=True, slots=True)
class AppServiceQueue:
    """One application service's transactions (docs/appservices.md)."""

    service_id: str
    pending: int  # transactions built and not yet taken by the service
    events_behind: int  # events stream positions not yet looked at for it
    attempts: int  # failed attempts at its pending transaction in a row


@dataclass(frozen=True, slots=True)
class FederationQueues:
    """The federation sender's queues, over all destinations: one series per destination
    would be as many series as servers we talk to."""

    pdus: int  # events queued for other servers
    edus: int  # EDUs queued for other servers
    destinations: int  # destinations with something queued
    deepest: int  # the longest queue (events and EDUs) of one destination
    backing_off: int  # destinations not to be tried before a retry time still to come


_PER_PUSHER = (
    sa.select(push_queue.c.pusher_id, sa.func.count().label("n"))
    .group_by(push_queue.c.pusher_id)
    .subquery()
)
_QUEUES = (
    sa.select(
        pushers.c.kind,
        sa.func.coalesce(sa.func.sum(_PER_PUSHER.c.n), 0).label("queued"),
        sa.func.count(_PER_PUSHER.c.pusher_id).label("pushers"),
        sa.func.coalesce(sa.func.max(_PER_PUSHER.c.n), 0).label("deepest"),
        sa.func.count().filter(pushers.c.attempts > 0).label("backing_off"),
    )
    .select_from(pushers.outerjoin(_PER_PUSHER, _PER_PUSHER.c.pusher_id == pushers.c.id))
    .group_by(pushers.c.kind)
)


_PENDING = (
    sa.select(appservice_txns.c.service_id, sa.func.count().label("n"))
    .group_by(appservice_txns.c.service_id)
    .subquery()
)


def _appservices(events_position: sa.ColumnElement[int]) -> sa.Select[Any]:
    return sa.select(
        appservice_state.c.service_id,
        sa.func.coalesce(_PENDING.c.n, 0).label("pending"),
        (events_position - appservice_state.c.events_cursor).label("behind"),
        appservice_state.c.attempts,
    ).select_from(
        appservice_state.outerjoin(_PENDING, _PENDING.c.service_id == appservice_state.c.service_id)
    )


_QUEUED = sa.union_all(
    sa.select(federation_outbound_pdus.c.destination.label("destination")),
    sa.select(federation_outbound_edus.c.destination.label("destination")),
).subquery()
_PER_DESTINATION = sa.select(_QUEUED.c.destination, sa.func.count().label("n")).group_by(
    _QUEUED.c.destination
)
_FEDERATION_TOTALS = sa.select(
    sa.select(sa.func.count()).select_from(federation_outbound_pdus).scalar_subquery(),
    sa.select(sa.func.count()).select_from(federation_outbound_edus).scalar_subquery(),
)
_BACKING_OFF = sa.select(sa.func.count()).where(
    federation_destinations.c.retry_at_ts > sa.bindparam("now")
)


class MetricsStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def pusher_queues(self) -> list[PusherQueues]:
        async with self._db.read() as conn:
            rows = (await conn.execute(_QUEUES)).all()
        return [
            PusherQueues(r.kind, int(r.queued), int(r.pushers), int(r.deepest), int(r.backing_off))
            for r in rows
        ]

    async def appservice_queues(self) -> list[AppServiceQueue]:
        async with self._db.read() as conn:
            statement = _appservices(self._db.committed_position(Stream.EVENTS))
            rows = (await conn.execute(statement)).all()
        return [
            AppServiceQueue(r.service_id, int(r.pending), max(0, int(r.behind)), int(r.attempts))
            for r in rows
        ]

    async def federation_queues(self, now_ms: int) -> FederationQueues:
        async with self._db.read() as conn:
            pdus, edus = (await conn.execute(_FEDERATION_TOTALS)).one()
            depths = [int(r.n) for r in (await conn.execute(_PER_DESTINATION)).all()]
            backing_off = (await conn.execute(_BACKING_OFF, {"now": now_ms})).scalar_one()
        return FederationQueues(
            int(pdus), int(edus), len(depths), max(depths, default=0), int(backing_off)
        )
