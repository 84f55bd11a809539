"""Delayed events (MSC4140): scheduled per user, found when due by any worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.storage.database import Database
from homeserver.storage.schema import current_state, delayed_events, events

_d = delayed_events


@dataclass(frozen=True, slots=True)
class DelayedEvent:
    delay_id: str
    user_id: str
    device_id: str
    room_id: str
    event_type: str
    state_key: str | None
    content: JsonDict
    delay: int
    send_at: int


def _delayed(r: Any) -> DelayedEvent:
    return DelayedEvent(
        r.delay_id,
        r.user_id,
        r.device_id,
        r.room_id,
        r.event_type,
        r.state_key,
        r.content,
        int(r.delay),
        int(r.send_at),
    )


class DelayedEventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, event: DelayedEvent, max_per_user: int) -> bool:
        """Schedule it; False (nothing stored) if the user has ``max_per_user`` already."""
        async with self._db.write() as conn:
            count = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(_d).where(_d.c.user_id == event.user_id)
                )
            ).scalar_one()
            if int(count) >= max_per_user:
                return False
            await conn.execute(
                sa.insert(_d).values(
                    delay_id=event.delay_id,
                    user_id=event.user_id,
                    device_id=event.device_id,
                    room_id=event.room_id,
                    event_type=event.event_type,
                    state_key=event.state_key,
                    content=event.content,
                    delay=event.delay,
                    send_at=event.send_at,
                    # Committed before this statement: a later state event is numbered above.
                    after_position=self._db.committed_position(Stream.EVENTS),
                )
            )
        return True

    async def cancel_overwritten(
        self, *, user_id: str | None = None, delay_id: str | None = None
    ) -> int:
        """MSC4140: drops the delayed state events (of ``user_id``, or the one ``delay_id``)
        whose type and state key now hold a state event another user sent after they were
        scheduled; returns how many."""
        overwritten = (
            sa.exists()
            .select_from(current_state.join(events, events.c.event_id == current_state.c.event_id))
            .where(
                current_state.c.room_id == _d.c.room_id,
                current_state.c.type == _d.c.event_type,
                current_state.c.state_key == _d.c.state_key,
                events.c.sender != _d.c.user_id,
                events.c.stream_ordering > _d.c.after_position,
            )
        )
        query = sa.delete(_d).where(_d.c.state_key.is_not(None), overwritten)
        if user_id is not None:
            query = query.where(_d.c.user_id == user_id)
        if delay_id is not None:
            query = query.where(_d.c.delay_id == delay_id)
        result = await self._db.write_alone(query)
        return int(result.rowcount)

    async def get(self, delay_id: str) -> DelayedEvent | None:
        async with self._db.read() as conn:
            r = (await conn.execute(sa.select(_d).where(_d.c.delay_id == delay_id))).first()
        return _delayed(r) if r is not None else None

    async def list_for_user(self, user_id: str) -> list[DelayedEvent]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(_d).where(_d.c.user_id == user_id).order_by(_d.c.send_at)
                )
            ).all()
        return [_delayed(r) for r in rows]

    async def restart(self, delay_id: str, now_ms: int) -> bool:
        """Its delay starts again from ``now_ms``; False if it is gone (sent, cancelled)."""
        result = await self._db.write_alone(
            sa.update(_d).where(_d.c.delay_id == delay_id).values(send_at=now_ms + _d.c.delay)
        )
        return bool(result.rowcount)

    async def delete(self, delay_id: str) -> bool:
        result = await self._db.write_alone(sa.delete(_d).where(_d.c.delay_id == delay_id))
        return bool(result.rowcount)

    async def due(self, now_ms: int, limit: int) -> list[DelayedEvent]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(_d).where(_d.c.send_at <= now_ms).order_by(_d.c.send_at).limit(limit)
                )
            ).all()
        return [_delayed(r) for r in rows]

    async def next_send_at(self) -> int | None:
        async with self._db.read() as conn:
            value = (await conn.execute(sa.select(sa.func.min(_d.c.send_at)))).scalar()
        return int(value) if value is not None else None
