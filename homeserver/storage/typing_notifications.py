"""Typing notifications: who is typing in which room until when, and when each room's list
last changed (the typing stream)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.storage.database import Connection, Database
from homeserver.storage.schema import typing_notifications, typing_rooms


@dataclass(frozen=True, slots=True)
class Expired:
    """Rooms whose lists lost someone to the clock, at one typing position."""

    position: int
    room_ids: tuple[str, ...]


class TypingStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def start(self, room_id: str, user_id: str, expires_ts: int, now_ms: int) -> int | None:
        """Mark ``user_id`` typing until ``expires_ts``; the new position if the room's list
        changed, None if they were typing already (only the expiry moves)."""
        async with self._db.write() as conn:
            current = (
                await conn.execute(
                    sa.select(typing_notifications.c.expires_ts).where(
                        typing_notifications.c.room_id == room_id,
                        typing_notifications.c.user_id == user_id,
                    )
                )
            ).first()
            await conn.execute(
                self._db.upsert(
                    typing_notifications,
                    {"room_id": room_id, "user_id": user_id, "expires_ts": expires_ts},
                    keys=("room_id", "user_id"),
                )
            )
            if current is not None and int(current.expires_ts) > now_ms:
                return None
            return await self._room_changed(conn, (room_id,))

    async def stop(self, room_id: str, user_id: str) -> int | None:
        """The new position if ``user_id`` was typing, None if not."""
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.delete(typing_notifications).where(
                    typing_notifications.c.room_id == room_id,
                    typing_notifications.c.user_id == user_id,
                )
            )
            if result.rowcount == 0:
                return None
            return await self._room_changed(conn, (room_id,))

    async def expire(self, now_ms: int) -> Expired:
        """Remove every expired entry; one position for all the rooms that changed."""
        due = typing_notifications.c.expires_ts <= now_ms
        async with self._db.read() as conn:
            any_due = (
                await conn.execute(sa.select(typing_notifications.c.room_id).where(due).limit(1))
            ).first()
        if any_due is None:
            return Expired(0, ())
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.delete(typing_notifications).where(due).returning(typing_notifications.c.room_id)
            )
            room_ids = tuple(sorted({r.room_id for r in result.all()}))
            if not room_ids:  # another worker was first
                return Expired(0, ())
            position = await self._room_changed(conn, room_ids)
        return Expired(position, room_ids)

    async def get_typing(
        self, room_ids: Sequence[str], since: int | None, upto: int, now_ms: int
    ) -> dict[str, list[str]]:
        """Who types now, by room: with ``since``, every room whose list changed in
        (since, upto] (an empty list says that everyone stopped); without, the rooms where
        someone types."""
        if not room_ids:
            return {}
        typing_now = (
            sa.select(typing_notifications.c.room_id, typing_notifications.c.user_id)
            .where(
                typing_notifications.c.room_id.in_(list(room_ids)),
                typing_notifications.c.expires_ts > now_ms,
            )
            .order_by(typing_notifications.c.room_id, typing_notifications.c.user_id)
        )
        async with self._db.read() as conn:
            if since is None:
                changed: list[str] = []
            else:
                changed = [
                    r.room_id
                    for r in (
                        await conn.execute(
                            sa.select(typing_rooms.c.room_id).where(
                                typing_rooms.c.room_id.in_(list(room_ids)),
                                typing_rooms.c.stream_position > since,
                                typing_rooms.c.stream_position <= upto,
                            )
                        )
                    ).all()
                ]
                if not changed:
                    return {}
                typing_now = typing_now.where(typing_notifications.c.room_id.in_(changed))
            rows = (await conn.execute(typing_now)).all()
        out: dict[str, list[str]] = {room_id: [] for room_id in changed}
        for r in rows:
            out.setdefault(r.room_id, []).append(r.user_id)
        return out

    async def _room_changed(self, conn: Connection, room_ids: Sequence[str]) -> int:
        position = await self._db.next_position(conn, Stream.TYPING)
        for room_id in room_ids:
            await conn.execute(
                self._db.upsert(
                    typing_rooms,
                    {"room_id": room_id, "stream_position": position},
                    keys=("room_id",),
                )
            )
        return position
