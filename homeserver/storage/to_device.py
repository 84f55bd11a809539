"""Send-to-device messages: an inbox per recipient device, on the to-device stream.

A message stays until the device acknowledges it: a sync from a token at or past the
position of the response that first carried it (spec: Send-to-Device messaging, "Server
behaviour"). Responses carry a bounded number, so acknowledgement follows what was actually
delivered, not the token alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from cachetools import LRUCache

from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.storage.database import Database, prepared
from homeserver.storage.schema import device_inbox, devices, to_device_txns

ALL_DEVICES = "*"


@dataclass(frozen=True, slots=True)
class ToDeviceMessage:
    sender: str
    type: str
    content: JsonDict
    stream_position: int


_ANY_PENDING = prepared(
    sa.select(device_inbox.c.stream_position)
    .where(
        device_inbox.c.user_id == sa.bindparam("user_id"),
        device_inbox.c.device_id == sa.bindparam("device_id"),
    )
    .limit(1)
)


class ToDeviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Device -> a to-device position at which its inbox was seen empty. Every message
        # takes a new position, and positions commit in order, so while the stream is still
        # there the inbox is still empty: no query (true on every worker alike).
        self._empty_at: LRUCache[tuple[str, str], int] = LRUCache(maxsize=100_000)

    async def add_messages(
        self,
        sender: str,
        sender_device: str,
        txn_id: str,
        event_type: str,
        messages: Mapping[str, Mapping[str, JsonDict]],
        now_ms: int,
    ) -> tuple[int, list[str]] | None:
        """Queue ``messages`` ({user_id: {device_id or "*": content}}) for local devices.

        Unknown users and devices are skipped; an explicit device ID wins over ``*``.
        Returns the position and the users who got something (``(0, [])`` if nobody did),
        or None if this transaction (sender, sender_device, txn_id) was already done: the
        request is then a no-op.
        """
        async with self._db.write() as conn:
            fresh = await conn.execute(
                self._db.insert_ignore(
                    to_device_txns,
                    {
                        "user_id": sender,
                        "device_id": sender_device,
                        "txn_id": txn_id,
                        "created_ts": now_ms,
                    },
                    keys=("user_id", "device_id", "txn_id"),
                )
            )
            if fresh.rowcount == 0:
                return None
            # The devices are read in this transaction so that a message never outlives a
            # device deleted meanwhile by more than that deletion's own cleanup.
            existing: dict[str, set[str]] = {}
            for r in (
                await conn.execute(
                    sa.select(devices.c.user_id, devices.c.device_id).where(
                        devices.c.user_id.in_(list(messages))
                    )
                )
            ).all():
                existing.setdefault(r.user_id, set()).add(r.device_id)
            rows: list[dict[str, object]] = []
            for user_id, by_device in messages.items():
                known = existing.get(user_id, set())
                targets: dict[str, JsonDict] = {}
                if ALL_DEVICES in by_device:
                    targets = dict.fromkeys(sorted(known), by_device[ALL_DEVICES])
                targets.update(
                    {d: c for d, c in by_device.items() if d != ALL_DEVICES and d in known}
                )
                rows.extend(
                    {
                        "user_id": user_id,
                        "device_id": device_id,
                        "sender": sender,
                        "type": event_type,
                        "content": content,
                    }
                    for device_id, content in targets.items()
                )
            if not rows:
                return 0, []
            position = await self._db.next_position(conn, Stream.TO_DEVICE)
            await conn.execute(
                sa.insert(device_inbox), [{**row, "stream_position": position} for row in rows]
            )
        return position, sorted({str(row["user_id"]) for row in rows})

    async def deliver(
        self, user_id: str, device_id: str, *, acknowledged: int | None, upto: int, limit: int
    ) -> list[ToDeviceMessage]:
        """Delete what a sync from ``acknowledged`` confirms, then return the next messages.

        At most ``limit``, oldest first, up to position ``upto`` (the response's to-device
        position): each is marked as carried by that response, if it was not already.
        """
        if self._empty_at.get((user_id, device_id)) == upto:
            return []
        async with self._db.read() as conn:
            # Most syncs find an empty inbox: no write transaction for them.
            pending = (
                await conn.execute(_ANY_PENDING, {"user_id": user_id, "device_id": device_id})
            ).first()
        if pending is None:
            # Everything up to ``upto`` was committed before this read (positions commit in
            # order), so the inbox is empty at ``upto``.
            self._empty_at[(user_id, device_id)] = upto
            return []
        where = (device_inbox.c.user_id == user_id, device_inbox.c.device_id == device_id)
        async with self._db.write() as conn:
            if acknowledged is not None:
                await conn.execute(
                    sa.delete(device_inbox).where(
                        *where, device_inbox.c.delivered_at <= acknowledged
                    )
                )
            rows = (
                await conn.execute(
                    sa.select(device_inbox)
                    .where(*where, device_inbox.c.stream_position <= upto)
                    .order_by(device_inbox.c.stream_position)
                    .limit(limit)
                )
            ).all()
            if rows:
                await conn.execute(
                    sa.update(device_inbox)
                    .where(
                        *where,
                        device_inbox.c.delivered_at.is_(None),
                        device_inbox.c.stream_position <= rows[-1].stream_position,
                    )
                    .values(delivered_at=upto)
                )
        return [ToDeviceMessage(r.sender, r.type, r.content, int(r.stream_position)) for r in rows]

    async def count_pending(self, user_id: str, device_id: str) -> int:
        async with self._db.read() as conn:
            return int(
                (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(device_inbox)
                        .where(
                            device_inbox.c.user_id == user_id, device_inbox.c.device_id == device_id
                        )
                    )
                ).scalar_one()
            )

    async def delete_for_devices(self, user_id: str, device_ids: Sequence[str]) -> None:
        """Drop the pending messages and transaction IDs of deleted devices."""
        if not device_ids:
            return
        async with self._db.write() as conn:
            for table in (device_inbox, to_device_txns):
                await conn.execute(
                    sa.delete(table).where(
                        table.c.user_id == user_id, table.c.device_id.in_(list(device_ids))
                    )
                )
