"""Application services: their cursors over the streams, their queued transactions, and the
reads that decide what a service is sent (events, members, aliases, receipts, typing,
presence in a range of positions)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.storage.database import Database
from homeserver.storage.events.model import EVENT_COLUMNS, StoredEvent, to_event
from homeserver.storage.schema import (
    appservice_state,
    appservice_txns,
    device_inbox,
    events,
    presence,
    receipts,
    room_aliases,
    room_memberships,
    rooms,
    typing_notifications,
    typing_rooms,
)


@dataclass(frozen=True, slots=True)
class Cursors:
    """How far a service's transactions have read each stream."""

    events: int
    receipts: int
    typing: int
    presence: int
    to_device: int


@dataclass(frozen=True, slots=True)
class ServiceState:
    service_id: str
    cursors: Cursors
    last_txn_id: int
    attempts: int
    next_attempt_ts: int


@dataclass(frozen=True, slots=True)
class QueuedTxn:
    service_id: str
    txn_id: int
    body: str  # JSON
    created_ts: int


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str
    event_id: str
    ts: int


@dataclass(frozen=True, slots=True)
class ToDeviceRow:
    user_id: str
    device_id: str
    sender: str
    type: str
    content: Any


@dataclass(frozen=True, slots=True)
class PresenceRow:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int
    currently_active: bool


def _state(r: Any) -> ServiceState:
    return ServiceState(
        r.service_id,
        Cursors(
            int(r.events_cursor),
            int(r.receipts_cursor),
            int(r.typing_cursor),
            int(r.presence_cursor),
            int(r.to_device_cursor),
        ),
        int(r.last_txn_id),
        int(r.attempts),
        int(r.next_attempt_ts),
    )


class AppServiceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- state and queue ---------------------------------------------------------------------

    async def get_state(self, service_id: str) -> ServiceState:
        """The service's state; a service seen for the first time starts at the current
        positions (it is sent what happens from now on, not the server's history)."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(appservice_state).where(appservice_state.c.service_id == service_id)
                )
            ).first()
        if row is not None:
            return _state(row)
        positions = await self._db.current_positions()
        async with self._db.write() as conn:
            await conn.execute(
                self._db.insert_ignore(
                    appservice_state,
                    {
                        "service_id": service_id,
                        "events_cursor": positions.get(Stream.EVENTS, 0),
                        "receipts_cursor": positions.get(Stream.RECEIPTS, 0),
                        "typing_cursor": positions.get(Stream.TYPING, 0),
                        "presence_cursor": positions.get(Stream.PRESENCE, 0),
                        "to_device_cursor": positions.get(Stream.TO_DEVICE, 0),
                        "last_txn_id": 0,
                        "attempts": 0,
                        "next_attempt_ts": 0,
                        "lease_owner": None,
                        "lease_until_ts": 0,
                    },
                    keys=("service_id",),
                )
            )
            row = (
                await conn.execute(
                    sa.select(appservice_state).where(appservice_state.c.service_id == service_id)
                )
            ).one()
        return _state(row)

    async def claim(self, service_id: str, worker: str, now_ms: int, lease_ms: int) -> bool:
        """Take (or renew) the right to send the service's transactions; False when another
        worker holds it."""
        s = appservice_state.c
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(appservice_state)
                .where(
                    s.service_id == service_id,
                    sa.or_(
                        s.lease_owner.is_(None),
                        s.lease_owner == worker,
                        s.lease_until_ts <= now_ms,
                    ),
                )
                .values(lease_owner=worker, lease_until_ts=now_ms + lease_ms)
            )
        return result.rowcount == 1

    async def release(self, service_id: str, worker: str) -> None:
        s = appservice_state.c
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(appservice_state)
                .where(s.service_id == service_id, s.lease_owner == worker)
                .values(lease_owner=None, lease_until_ts=0)
            )

    async def get_first_txn(self, service_id: str) -> QueuedTxn | None:
        t = appservice_txns.c
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(appservice_txns)
                    .where(t.service_id == service_id)
                    .order_by(t.txn_id)
                    .limit(1)
                )
            ).first()
        if row is None:
            return None
        return QueuedTxn(row.service_id, int(row.txn_id), row.body, int(row.created_ts))

    async def count_txns(self, service_id: str) -> int:
        async with self._db.read() as conn:
            value = (
                await conn.execute(
                    sa.select(sa.func.count()).where(appservice_txns.c.service_id == service_id)
                )
            ).scalar_one()
        return int(value)

    async def advance(
        self, service_id: str, seen: Cursors, to: Cursors, body: str | None, now_ms: int
    ) -> QueuedTxn | None | bool:
        """Move the cursors from ``seen`` to ``to`` and, with a ``body``, queue it as the next
        transaction, in one write. False when the cursors are no longer ``seen`` (another
        worker moved them); else the queued transaction, or None without a body."""
        s = appservice_state.c
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    sa.select(s.last_txn_id).where(
                        s.service_id == service_id,
                        s.events_cursor == seen.events,
                        s.receipts_cursor == seen.receipts,
                        s.typing_cursor == seen.typing,
                        s.presence_cursor == seen.presence,
                        s.to_device_cursor == seen.to_device,
                    )
                )
            ).first()
            if row is None:
                return False
            values: dict[str, Any] = {
                "events_cursor": to.events,
                "receipts_cursor": to.receipts,
                "typing_cursor": to.typing,
                "presence_cursor": to.presence,
                "to_device_cursor": to.to_device,
            }
            txn = None
            if body is not None:
                txn = QueuedTxn(service_id, int(row.last_txn_id) + 1, body, now_ms)
                values["last_txn_id"] = txn.txn_id
                await conn.execute(
                    sa.insert(appservice_txns).values(
                        service_id=service_id, txn_id=txn.txn_id, body=body, created_ts=now_ms
                    )
                )
            await conn.execute(
                sa.update(appservice_state).where(s.service_id == service_id).values(**values)
            )
        return txn

    async def complete_txn(self, service_id: str, txn_id: int) -> None:
        """The service took the transaction: it leaves the queue, the back-off ends."""
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(appservice_txns).where(
                    appservice_txns.c.service_id == service_id,
                    appservice_txns.c.txn_id == txn_id,
                )
            )
            await conn.execute(
                sa.update(appservice_state)
                .where(appservice_state.c.service_id == service_id)
                .values(attempts=0, next_attempt_ts=0)
            )

    async def record_failure(self, service_id: str, attempts: int, next_attempt_ts: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(appservice_state)
                .where(appservice_state.c.service_id == service_id)
                .values(attempts=attempts, next_attempt_ts=next_attempt_ts)
            )

    # --- what happened in a range of positions ------------------------------------------------

    async def get_events(self, after: int, upto: int, limit: int) -> list[StoredEvent]:
        """Served events with ``after < stream_ordering <= upto``, oldest first."""
        e = events.c
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(*EVENT_COLUMNS)
                    .where(e.stream_ordering > max(after, 0), e.stream_ordering <= upto)
                    .order_by(e.stream_ordering)
                    .limit(limit)
                )
            ).all()
        return [to_event(r) for r in rows]

    async def get_joined_members(self, room_ids: Collection[str]) -> dict[str, list[str]]:
        if not room_ids:
            return {}
        m = room_memberships.c
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(m.room_id, m.user_id).where(
                        m.room_id.in_(list(room_ids)), m.membership == "join"
                    )
                )
            ).all()
        found: dict[str, list[str]] = {}
        for r in rows:
            found.setdefault(r.room_id, []).append(r.user_id)
        return found

    async def get_joined_rooms(self, user_ids: Collection[str]) -> dict[str, list[str]]:
        if not user_ids:
            return {}
        m = room_memberships.c
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(m.user_id, m.room_id).where(
                        m.user_id.in_(list(user_ids)), m.membership == "join"
                    )
                )
            ).all()
        found: dict[str, list[str]] = {}
        for r in rows:
            found.setdefault(r.user_id, []).append(r.room_id)
        return found

    async def get_aliases(self, room_ids: Collection[str]) -> dict[str, list[str]]:
        if not room_ids:
            return {}
        a = room_aliases.c
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(a.room_id, a.alias).where(a.room_id.in_(list(room_ids)))
                )
            ).all()
        found: dict[str, list[str]] = {}
        for r in rows:
            found.setdefault(r.room_id, []).append(r.alias)
        return found

    async def get_room_versions(self, room_ids: Collection[str]) -> dict[str, str]:
        if not room_ids:
            return {}
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(rooms.c.room_id, rooms.c.room_version).where(
                        rooms.c.room_id.in_(list(room_ids))
                    )
                )
            ).all()
        return {r.room_id: r.room_version for r in rows}

    async def get_receipts(self, after: int, upto: int) -> list[ReceiptRow]:
        """Public receipts (not m.read.private) that moved in ``(after, upto]``."""
        r = receipts.c
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(r.room_id, r.receipt_type, r.user_id, r.thread_id, r.event_id, r.ts)
                    .where(
                        r.stream_position > after,
                        r.stream_position <= upto,
                        r.receipt_type != "m.read.private",
                    )
                    .order_by(r.stream_position)
                )
            ).all()
        return [
            ReceiptRow(x.room_id, x.receipt_type, x.user_id, x.thread_id, x.event_id, int(x.ts))
            for x in rows
        ]

    async def get_typing(self, after: int, upto: int, now_ms: int) -> dict[str, list[str]]:
        """Rooms whose typing list changed in ``(after, upto]``, with who types now."""
        t = typing_rooms.c
        async with self._db.read() as conn:
            changed = (
                await conn.execute(
                    sa.select(t.room_id).where(t.stream_position > after, t.stream_position <= upto)
                )
            ).all()
            room_ids = [r.room_id for r in changed]
            found: dict[str, list[str]] = {room_id: [] for room_id in room_ids}
            if room_ids:
                n = typing_notifications.c
                rows = (
                    await conn.execute(
                        sa.select(n.room_id, n.user_id).where(
                            n.room_id.in_(room_ids), n.expires_ts > now_ms
                        )
                    )
                ).all()
                for r in rows:
                    found[r.room_id].append(r.user_id)
        return found

    async def get_presence(self, after: int, upto: int) -> list[PresenceRow]:
        p = presence.c
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        p.user_id, p.state, p.status_msg, p.last_active_ts, p.currently_active
                    ).where(p.stream_position > after, p.stream_position <= upto)
                )
            ).all()
        return [
            PresenceRow(
                r.user_id, r.state, r.status_msg, int(r.last_active_ts), bool(r.currently_active)
            )
            for r in rows
        ]

    async def get_to_device(self, after: int, upto: int) -> list[ToDeviceRow]:
        """To-device messages queued in ``(after, upto]``, oldest first."""
        d = device_inbox.c
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(d.user_id, d.device_id, d.sender, d.type, d.content)
                    .where(d.stream_position > after, d.stream_position <= upto)
                    .order_by(d.stream_position)
                )
            ).all()
        return [ToDeviceRow(r.user_id, r.device_id, r.sender, r.type, r.content) for r in rows]
