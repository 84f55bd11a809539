"""Thread subscriptions (MSC4306): each user's latest setting per thread, and the
thread_subscriptions stream of their changes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.storage.database import Database
from homeserver.storage.schema import thread_subscriptions as ts


@dataclass(frozen=True, slots=True)
class ThreadSubscription:
    automatic: bool


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """One thread's latest change, at ``stream_id`` on the thread_subscriptions stream."""

    stream_id: int
    room_id: str
    thread_root_id: str
    subscribed: bool
    automatic: bool


class Conflict(Enum):
    """An automatic subscription caused by an event the user unsubscribed after."""

    UNSUBSCRIBED_LATER = "unsubscribed_later"


class ThreadSubscriptionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(
        self, user_id: str, room_id: str, thread_root_id: str
    ) -> ThreadSubscription | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(ts.c.subscribed, ts.c.automatic).where(
                        ts.c.user_id == user_id,
                        ts.c.room_id == room_id,
                        ts.c.thread_root_id == thread_root_id,
                    )
                )
            ).first()
        if row is None or not row.subscribed:
            return None
        return ThreadSubscription(bool(row.automatic))

    async def subscribe(
        self, user_id: str, room_id: str, thread_root_id: str, *, cause_position: int | None
    ) -> int | Conflict | None:
        """Subscribe, manually (``cause_position`` None) or automatically because of the
        event at that events stream position. The new stream position; None when nothing
        changed (already subscribed; an automatic subscription never turns a manual one into
        an automatic one); a Conflict when the user unsubscribed at or after the cause."""
        automatic = cause_position is not None
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    sa.select(ts.c.subscribed, ts.c.automatic, ts.c.unsubscribed_at).where(
                        ts.c.user_id == user_id,
                        ts.c.room_id == room_id,
                        ts.c.thread_root_id == thread_root_id,
                    )
                )
            ).first()
            if row is not None and row.subscribed:
                if automatic or not row.automatic:
                    return None
            if (
                row is not None
                and not row.subscribed
                and cause_position is not None
                and row.unsubscribed_at is not None
                and cause_position <= int(row.unsubscribed_at)
            ):
                return Conflict.UNSUBSCRIBED_LATER
            position = await self._db.next_position(conn, Stream.THREAD_SUBSCRIPTIONS)
            await conn.execute(
                self._db.upsert(
                    ts,
                    {
                        "user_id": user_id,
                        "room_id": room_id,
                        "thread_root_id": thread_root_id,
                        "subscribed": True,
                        "automatic": automatic,
                        "stream_id": position,
                        "unsubscribed_at": None,
                    },
                    keys=("user_id", "room_id", "thread_root_id"),
                )
            )
            return position

    async def unsubscribe(self, user_id: str, room_id: str, thread_root_id: str) -> int | None:
        """The new stream position, None if the user was not subscribed."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    sa.select(ts.c.subscribed).where(
                        ts.c.user_id == user_id,
                        ts.c.room_id == room_id,
                        ts.c.thread_root_id == thread_root_id,
                    )
                )
            ).first()
            if row is None or not row.subscribed:
                return None
            position = await self._db.next_position(conn, Stream.THREAD_SUBSCRIPTIONS)
            events_now = (await self._db.current_positions(conn)).get(Stream.EVENTS, 0)
            await conn.execute(
                sa.update(ts)
                .where(
                    ts.c.user_id == user_id,
                    ts.c.room_id == room_id,
                    ts.c.thread_root_id == thread_root_id,
                )
                .values(
                    subscribed=False,
                    automatic=False,
                    stream_id=position,
                    unsubscribed_at=events_now,
                )
            )
            return position

    async def current_position(self) -> int:
        return (await self._db.current_positions()).get(Stream.THREAD_SUBSCRIPTIONS, 0)

    async def changes(
        self, user_id: str, *, after: int, upto: int, limit: int
    ) -> list[SubscriptionChange]:
        """The user's latest ``limit`` changes with ``after < stream_id <= upto``, oldest
        first."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        ts.c.stream_id,
                        ts.c.room_id,
                        ts.c.thread_root_id,
                        ts.c.subscribed,
                        ts.c.automatic,
                    )
                    .where(ts.c.user_id == user_id, ts.c.stream_id > after, ts.c.stream_id <= upto)
                    .order_by(ts.c.stream_id.desc())
                    .limit(limit)
                )
            ).all()
        return [
            SubscriptionChange(
                int(r.stream_id), r.room_id, r.thread_root_id, bool(r.subscribed), bool(r.automatic)
            )
            for r in reversed(rows)
        ]
