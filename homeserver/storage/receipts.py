"""Read receipts (the receipts stream) and the unread counts they bound."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.storage.database import Database, prepared
from homeserver.storage.schema import events, receipts
from homeserver.storage.shared_reads import RangeReads

READ = "m.read"
READ_PRIVATE = "m.read.private"
MAIN_THREAD = "main"
UNTHREADED = ""  # the thread_id column of an unthreaded receipt (primary keys are not NULL)


@dataclass(frozen=True, slots=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str | None  # None: unthreaded
    event_id: str
    ts: int
    stream_position: int


# Whose receipts moved after a position is read for ranges of up to this many positions.
MOVED_MAX_POSITIONS = 100
_MOVED = prepared(
    sa.select(receipts.c.user_id, receipts.c.room_id)
    .where(receipts.c.stream_position > sa.bindparam("after"))
    .limit(sa.bindparam("limit"))
)


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._moved: RangeReads[Mapping[str, frozenset[str]] | None] = RangeReads(
            32, MOVED_MAX_POSITIONS, {}, name="receipts"
        )

    async def get_moved(self, after: int, upto: int) -> Mapping[str, frozenset[str]] | None:
        """The rooms in which each user's receipts moved in ``(after, upto]`` (read-only),
        and maybe some that moved later; None when more than ``MOVED_MAX_POSITIONS`` lie
        there. ``upto`` must be committed: the answer is kept for everyone who asks.

        A receipt keeps only its latest position, so the read is of everything after
        ``after``: a receipt that moved in the range and again after it is still found."""
        return await self._moved.get(after, upto, self._read_moved)

    async def _read_moved(self, after: int, upto: int) -> Mapping[str, frozenset[str]] | None:
        # Later receipts may be read too, up to as many again.
        limit = 2 * MOVED_MAX_POSITIONS
        async with self._db.read() as conn:
            rows = (await conn.execute(_MOVED, {"after": after, "limit": limit + 1})).all()
        if len(rows) > limit:
            return None
        moved: dict[str, set[str]] = {}
        for r in rows:
            moved.setdefault(r.user_id, set()).add(r.room_id)
        return {user_id: frozenset(rooms) for user_id, rooms in moved.items()}

    async def put_receipt(
        self,
        room_id: str,
        receipt_type: str,
        user_id: str,
        thread_id: str | None,
        event_id: str,
        event_stream_ordering: int,
        ts: int,
    ) -> int | None:
        """Move the user's receipt forward to ``event_id``; its receipts position, or None
        when the receipt already is at or after that event (receipts are "up to" marks)."""
        key = {
            "room_id": room_id,
            "receipt_type": receipt_type,
            "user_id": user_id,
            "thread_id": thread_id if thread_id is not None else UNTHREADED,
        }
        async with self._db.write() as conn:
            current = (
                await conn.execute(
                    sa.select(receipts.c.event_stream_ordering).where(
                        *(receipts.c[k] == v for k, v in key.items())
                    )
                )
            ).first()
            if current is not None and int(current.event_stream_ordering) >= event_stream_ordering:
                return None
            position = await self._db.next_position(conn, Stream.RECEIPTS)
            await conn.execute(
                self._db.upsert(
                    receipts,
                    {
                        **key,
                        "event_id": event_id,
                        "event_stream_ordering": event_stream_ordering,
                        "ts": ts,
                        "stream_position": position,
                    },
                    keys=tuple(key),
                )
            )
        return position

    async def get_receipts(
        self, room_ids: Sequence[str], user_id: str, since: int | None, upto: int
    ) -> list[Receipt]:
        """Receipts in the rooms that moved in (since, upto] (all of them without ``since``),
        as ``user_id`` may see them: everyone's public ones, and only their own private."""
        if not room_ids:
            return []
        query = (
            sa.select(receipts)
            .where(
                receipts.c.room_id.in_(list(room_ids)),
                receipts.c.stream_position <= upto,
                sa.or_(receipts.c.receipt_type == READ, receipts.c.user_id == user_id),
            )
            .order_by(receipts.c.stream_position)
        )
        if since is not None:
            query = query.where(receipts.c.stream_position > since)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Receipt(
                r.room_id,
                r.receipt_type,
                r.user_id,
                r.thread_id or None,
                r.event_id,
                int(r.ts),
                int(r.stream_position),
            )
            for r in rows
        ]

    async def count_unread(
        self, user_id: str, room_ids: Sequence[str], event_types: Sequence[str]
    ) -> dict[str, int]:
        """Events of ``event_types`` from others after the user's read mark, by room, in one
        query. The mark is the later of their latest unthreaded or main-timeline ``m.read`` /
        ``m.read.private`` receipt and their own latest event (spec, "Marking notifications
        as read": sending an event moves the receipt too). Rooms with none are left out."""
        if not room_ids:
            return {}
        rooms = list(room_ids)
        marks = sa.union_all(
            sa.select(
                receipts.c.room_id.label("room_id"),
                sa.func.max(receipts.c.event_stream_ordering).label("mark"),
            )
            .where(
                receipts.c.room_id.in_(rooms),
                receipts.c.user_id == user_id,
                receipts.c.receipt_type.in_((READ, READ_PRIVATE)),
                receipts.c.thread_id.in_((UNTHREADED, MAIN_THREAD)),
            )
            .group_by(receipts.c.room_id),
            sa.select(
                events.c.room_id.label("room_id"),
                sa.func.max(events.c.stream_ordering).label("mark"),
            )
            .where(events.c.room_id.in_(rooms), events.c.sender == user_id)
            .group_by(events.c.room_id),
        ).subquery()
        read_upto = (
            sa.select(marks.c.room_id, sa.func.max(marks.c.mark).label("mark"))
            .group_by(marks.c.room_id)
            .subquery()
        )
        query = (
            sa.select(events.c.room_id, sa.func.count().label("n"))
            .join(read_upto, read_upto.c.room_id == events.c.room_id)
            .where(
                events.c.stream_ordering > read_upto.c.mark,
                events.c.sender != user_id,
                events.c.type.in_(list(event_types)),
                events.c.state_key.is_(None),
                events.c.redacted_by.is_(None),
            )
            .group_by(events.c.room_id)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {r.room_id: int(r.n) for r in rows}
