"""Pushers, the push sender's cursor over the push actions, and its per-pusher queue."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.push import MAX_POSITION
from homeserver.storage.schema import (
    event_push_actions,
    presence,
    push_cursors,
    push_queue,
    pushers,
)

PUSHER_CURSOR = "pusher"


@dataclass(frozen=True, slots=True)
class Pusher:
    id: int
    user_id: str
    kind: str
    app_id: str
    pushkey: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: JsonDict
    pushkey_ts: int
    device_id: str | None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class QueuedPush:
    pusher_id: int
    stream_ordering: int
    user_id: str
    room_id: str
    event_id: str
    actions_json: str
    event_ts: int
    due_ts: int


@dataclass(frozen=True, slots=True)
class PendingAction:
    """A push action of a user who has pushers, not yet queued."""

    user_id: str
    stream_ordering: int
    room_id: str
    event_id: str
    actions_json: str
    ts: int


def _pusher(r: Any) -> Pusher:
    return Pusher(
        int(r.id),
        r.user_id,
        r.kind,
        r.app_id,
        r.pushkey,
        r.app_display_name,
        r.device_display_name,
        r.profile_tag,
        r.lang,
        r.data,
        int(r.pushkey_ts),
        r.device_id,
        int(r.attempts),
    )


_CURSOR = prepared(
    sa.select(push_cursors.c.stream_ordering).where(push_cursors.c.name == sa.bindparam("name"))
)
# The push sender's scan, on every round: the push actions of a range of events for users
# with a pusher created before them, oldest first, a batch at a time.
_PENDING = prepared(
    sa.select(event_push_actions, pushers.c.id.label("pusher_id"))
    .join(
        pushers,
        sa.and_(
            pushers.c.user_id == event_push_actions.c.user_id,
            event_push_actions.c.stream_ordering > pushers.c.start_stream_ordering,
        ),
    )
    .where(
        event_push_actions.c.stream_ordering > sa.bindparam("after"),
        event_push_actions.c.stream_ordering <= sa.bindparam("upto"),
    )
    .order_by(event_push_actions.c.stream_ordering)
    .limit(sa.bindparam("limit"))
)
# Pushers with something due and no back-off, not held by a live claim.
_CLAIMABLE = prepared(
    sa.select(pushers.c.id)
    .where(
        pushers.c.next_attempt_ts <= sa.bindparam("now"),
        pushers.c.claimed_until <= sa.bindparam("now"),
        sa.exists().where(
            push_queue.c.pusher_id == pushers.c.id, push_queue.c.due_ts <= sa.bindparam("now")
        ),
    )
    .order_by(pushers.c.next_attempt_ts, pushers.c.id)
    .limit(sa.bindparam("limit"))
)


class PusherStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- pushers ---------------------------------------------------------------------------

    async def get_pushers(self, user_id: str) -> list[Pusher]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(pushers).where(pushers.c.user_id == user_id).order_by(pushers.c.id)
                )
            ).all()
        return [_pusher(r) for r in rows]

    async def get_pusher(self, pusher_id: int) -> Pusher | None:
        async with self._db.read() as conn:
            r = (await conn.execute(sa.select(pushers).where(pushers.c.id == pusher_id))).first()
        return _pusher(r) if r is not None else None

    async def set_pusher(
        self,
        *,
        user_id: str,
        kind: str,
        app_id: str,
        pushkey: str,
        app_display_name: str,
        device_display_name: str,
        profile_tag: str | None,
        lang: str,
        data: JsonDict,
        ts: int,
        device_id: str | None,
        append: bool,
    ) -> None:
        """Create or update the user's pusher for (app_id, pushkey); unless ``append``, the
        same pushkey's pushers of other users go (spec: /pushers/set ``append``)."""
        async with self._db.write() as conn:
            if not append:
                gone = (
                    (
                        await conn.execute(
                            sa.select(pushers.c.id).where(
                                pushers.c.app_id == app_id,
                                pushers.c.pushkey == pushkey,
                                pushers.c.user_id != user_id,
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
                await self._delete_pushers(conn, [int(i) for i in gone])
            current = (
                await conn.execute(
                    sa.select(pushers.c.pushkey_ts).where(
                        pushers.c.app_id == app_id,
                        pushers.c.pushkey == pushkey,
                        pushers.c.user_id == user_id,
                    )
                )
            ).first()
            row = {
                "user_id": user_id,
                "kind": kind,
                "app_id": app_id,
                "pushkey": pushkey,
                "app_display_name": app_display_name,
                "device_display_name": device_display_name,
                "profile_tag": profile_tag,
                "lang": lang,
                "data": data,
                "device_id": device_id,
                "pushkey_ts": int(current.pushkey_ts) if current is not None else ts,
            }
            if current is None:
                # A new pusher hears of events from now on, not of those the sender has yet
                # to reach (as Synapse's last_stream_ordering).
                start = (
                    await conn.execute(sa.select(self._db.committed_position(Stream.EVENTS)))
                ).scalar()
                await conn.execute(
                    sa.insert(pushers).values(
                        **row,
                        attempts=0,
                        next_attempt_ts=0,
                        claimed_until=0,
                        start_stream_ordering=int(start or 0),
                    )
                )
            else:
                await conn.execute(
                    sa.update(pushers)
                    .where(
                        pushers.c.app_id == app_id,
                        pushers.c.pushkey == pushkey,
                        pushers.c.user_id == user_id,
                    )
                    .values(**row)
                )

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> bool:
        async with self._db.write() as conn:
            ids = (
                (
                    await conn.execute(
                        sa.select(pushers.c.id).where(
                            pushers.c.user_id == user_id,
                            pushers.c.app_id == app_id,
                            pushers.c.pushkey == pushkey,
                        )
                    )
                )
                .scalars()
                .all()
            )
            await self._delete_pushers(conn, [int(i) for i in ids])
        return bool(ids)

    async def delete_pushers_by_id(self, pusher_ids: Collection[int]) -> None:
        async with self._db.write() as conn:
            await self._delete_pushers(conn, list(pusher_ids))

    async def delete_pushers_for_devices(self, user_id: str, device_ids: Iterable[str]) -> None:
        async with self._db.write() as conn:
            ids = (
                (
                    await conn.execute(
                        sa.select(pushers.c.id).where(
                            pushers.c.user_id == user_id, pushers.c.device_id.in_(list(device_ids))
                        )
                    )
                )
                .scalars()
                .all()
            )
            await self._delete_pushers(conn, [int(i) for i in ids])

    async def _delete_pushers(self, conn: Connection, ids: list[int]) -> None:
        if ids:
            await conn.execute(sa.delete(push_queue).where(push_queue.c.pusher_id.in_(ids)))
            await conn.execute(sa.delete(pushers).where(pushers.c.id.in_(ids)))

    # --- the queue ---------------------------------------------------------------------------

    async def get_cursor(self, upto: int) -> int:
        """Where the sender stopped; a new database starts at ``upto`` (no old news)."""
        async with self._db.read() as conn:
            value = (await conn.execute(_CURSOR, {"name": PUSHER_CURSOR})).scalar()
        if value is not None:
            return int(value)
        async with self._db.write() as conn:
            await conn.execute(
                self._db.insert_ignore(
                    push_cursors, {"name": PUSHER_CURSOR, "stream_ordering": upto}, keys=("name",)
                )
            )
            value = (
                await conn.execute(
                    sa.select(push_cursors.c.stream_ordering).where(
                        push_cursors.c.name == PUSHER_CURSOR
                    )
                )
            ).scalar_one()
        return int(value)

    async def get_pending(
        self, after: int, upto: int, max_rows: int
    ) -> tuple[list[tuple[PendingAction, Pusher]], int]:
        """Push actions in (after, upto] of users with pushers, each with every pusher of its
        user: at most ``max_rows`` of them, and only whole events' (one event with more is
        read alone, whole); and the position they reach (``upto`` when they are all there
        are: mostly one statement, whose answer is that there is nothing to push)."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(_PENDING, {"after": after, "upto": upto, "limit": max_rows + 1})
            ).all()
            reach = upto
            if len(rows) > max_rows:
                reach = int(rows[-1].stream_ordering)  # maybe not all of its are here
                rows = [r for r in rows if r.stream_ordering < reach]
                if rows:
                    reach -= 1
                else:
                    rows = (
                        await conn.execute(
                            _PENDING, {"after": reach - 1, "upto": reach, "limit": MAX_POSITION}
                        )
                    ).all()
            ids = sorted({int(r.pusher_id) for r in rows})
            found = (
                {
                    int(p.id): _pusher(p)
                    for p in (
                        await conn.execute(sa.select(pushers).where(pushers.c.id.in_(ids)))
                    ).all()
                }
                if ids
                else {}
            )
        out = [
            (
                PendingAction(
                    r.user_id, int(r.stream_ordering), r.room_id, r.event_id, r.actions, int(r.ts)
                ),
                found[int(r.pusher_id)],
            )
            for r in rows
            if int(r.pusher_id) in found
        ]
        return out, reach

    async def enqueue(self, rows: Sequence[QueuedPush], cursor: int, reach: int) -> bool:
        """Queue the rows and move the cursor from ``cursor`` to ``reach``, atomically; False
        (nothing written) when another worker moved the cursor first."""
        async with self._db.write() as conn:
            moved = await conn.execute(
                sa.update(push_cursors)
                .where(
                    push_cursors.c.name == PUSHER_CURSOR, push_cursors.c.stream_ordering == cursor
                )
                .values(stream_ordering=reach)
            )
            if not moved.rowcount:
                return False
            for q in rows:
                await conn.execute(
                    self._db.insert_ignore(
                        push_queue,
                        {
                            "pusher_id": q.pusher_id,
                            "stream_ordering": q.stream_ordering,
                            "user_id": q.user_id,
                            "room_id": q.room_id,
                            "event_id": q.event_id,
                            "actions": q.actions_json,
                            "event_ts": q.event_ts,
                            "due_ts": q.due_ts,
                        },
                        keys=("pusher_id", "stream_ordering"),
                    )
                )
        return True

    async def claim_pushers(self, claim: str, now: int, lease_ms: int, limit: int) -> list[Pusher]:
        """Pushers with something due and no back-off, not held by a live claim: now held by
        ``claim`` (unique to this call) until ``now + lease_ms``."""
        params = {"now": now, "limit": limit}
        async with self._db.read() as conn:
            # Mostly there is nothing due: a read, and no write transaction, says so.
            if (await conn.execute(_CLAIMABLE, params)).first() is None:
                return []
        async with self._db.write() as conn:
            ids = (await conn.execute(_CLAIMABLE, params)).scalars().all()
            if not ids:
                return []
            await conn.execute(
                sa.update(pushers)
                .where(pushers.c.id.in_(list(ids)), pushers.c.claimed_until <= now)
                .values(claimed_by=claim, claimed_until=now + lease_ms)
            )
            rows = (
                await conn.execute(
                    sa.select(pushers).where(
                        pushers.c.id.in_(list(ids)), pushers.c.claimed_by == claim
                    )
                )
            ).all()
        return [_pusher(r) for r in rows]

    async def release_claims_except(self, worker: str) -> int:
        """Free the pushers claimed by any worker but ``worker`` (whose claims start with
        ``worker:``): the one worker that delivers (the singleton job) took over from one
        that died, whose claims would otherwise hold its pushers until they lapse."""
        prefix = f"{worker}:"
        mine = sa.func.substr(pushers.c.claimed_by, 1, len(prefix)) == prefix
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(pushers)
                .where(pushers.c.claimed_by.is_not(None), sa.not_(mine))
                .values(claimed_by=None, claimed_until=0)
            )
        return int(result.rowcount or 0)

    async def release_pusher(
        self, pusher_id: int, claim: str, *, attempts: int, next_attempt_ts: int
    ) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(pushers)
                .where(pushers.c.id == pusher_id, pushers.c.claimed_by == claim)
                .values(
                    claimed_by=None,
                    claimed_until=0,
                    attempts=attempts,
                    next_attempt_ts=next_attempt_ts,
                )
            )

    async def get_queue(self, pusher_id: int, limit: int) -> list[QueuedPush]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(push_queue)
                    .where(push_queue.c.pusher_id == pusher_id)
                    .order_by(push_queue.c.stream_ordering)
                    .limit(limit)
                )
            ).all()
        return [
            QueuedPush(
                int(r.pusher_id),
                int(r.stream_ordering),
                r.user_id,
                r.room_id,
                r.event_id,
                r.actions,
                int(r.event_ts),
                int(r.due_ts),
            )
            for r in rows
        ]

    async def delete_queued(self, pusher_id: int, stream_orderings: Collection[int]) -> None:
        if not stream_orderings:
            return
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(push_queue).where(
                    push_queue.c.pusher_id == pusher_id,
                    push_queue.c.stream_ordering.in_(list(stream_orderings)),
                )
            )

    async def get_connected_users(self, user_ids: Collection[str], since_ts: int) -> set[str]:
        """Users whose presence is not offline and whose last sync ended after ``since_ts``."""
        if not user_ids:
            return set()
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(presence.c.user_id).where(
                        presence.c.user_id.in_(list(user_ids)),
                        presence.c.state != "offline",
                        presence.c.last_sync_ts >= since_ts,
                    )
                )
            ).all()
        return {r.user_id for r in rows}
