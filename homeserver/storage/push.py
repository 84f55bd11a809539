"""Push actions: what each member's push rules made of an event, with the unread counts and
/notifications they make."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.schema import (
    event_push_actions,
    events,
    receipts,
)
from homeserver.storage.shared_reads import RangeReads

READ_RECEIPTS = ("m.read", "m.read.private")
UNTHREADED = ""  # receipts.thread_id of an unthreaded receipt


class PushAction(NamedTuple):
    """One member's notifying outcome for an event being persisted (a tuple: a large
    room makes a thousand per event)."""

    user_id: str
    thread_id: str
    actions_json: str
    highlight: bool


@dataclass(frozen=True, slots=True)
class Notification:
    room_id: str
    event_id: str
    stream_ordering: int
    thread_id: str
    actions_json: str
    highlight: bool
    ts: int


async def record_push_actions(
    conn: Connection,
    actions: Sequence[PushAction],
    room_id: str,
    event_id: str,
    stream_ordering: int,
    ts: int,
) -> None:
    """Inside the event's persist transaction: one row per notified member."""
    if not actions:
        return
    await conn.execute(
        _INSERT_PUSH_ACTION,
        [
            {
                "user_id": a.user_id,
                "stream_ordering": stream_ordering,
                "room_id": room_id,
                "event_id": event_id,
                "thread_id": a.thread_id,
                "actions": a.actions_json,
                "highlight": a.highlight,
                "ts": ts,
            }
            for a in actions
        ],
    )


_INSERT_PUSH_ACTION = prepared(
    sa.insert(event_push_actions),
    columns=(
        "user_id",
        "stream_ordering",
        "room_id",
        "event_id",
        "thread_id",
        "actions",
        "highlight",
        "ts",
    ),
)


# No position reaches this: ``upto`` of a count without a bound.
MAX_POSITION = 2**63 - 1
# The push actions between two positions, for all users, are read once for the syncs they
# wake (homeserver/push/unread.py), for short ranges of few rows only.
ACTION_WINDOW_MAX_EVENTS = 20
ACTION_WINDOW_MAX_ROWS = 4096
_ACTION_WINDOW = prepared(
    sa.select(
        event_push_actions.c.user_id,
        event_push_actions.c.room_id,
        event_push_actions.c.thread_id,
        event_push_actions.c.highlight,
        event_push_actions.c.ts,
    )
    .where(
        event_push_actions.c.stream_ordering > sa.bindparam("after"),
        event_push_actions.c.stream_ordering <= sa.bindparam("upto"),
    )
    .limit(sa.bindparam("limit"))
)


class WindowAction(NamedTuple):
    """A push action of a range of positions, for unread counts."""

    room_id: str
    thread_id: str
    highlight: bool
    ts: int


class ThreadUnread(NamedTuple):
    """A thread's unread notifications and highlights, and when the oldest was made (ms;
    push actions are pruned by age)."""

    notifications: int
    highlights: int
    oldest_ts: int


@functools.cache
def _marks(*, with_rooms: bool) -> tuple[sa.Subquery, sa.Subquery]:
    """Read marks of :users (in :rooms): per user and room (unthreaded receipts and the
    user's own latest event up to :upto, which the spec counts as a receipt), and per user,
    room and thread (threaded receipts, "main" too). Built once per shape: building costs
    more than running."""
    users: sa.BindParameter[list[str]] = sa.bindparam("users", expanding=True)
    unthreaded_receipts = sa.select(
        receipts.c.user_id.label("user_id"),
        receipts.c.room_id.label("room_id"),
        receipts.c.event_stream_ordering.label("mark"),
    ).where(
        receipts.c.user_id.in_(users),
        receipts.c.receipt_type.in_(READ_RECEIPTS),
        receipts.c.thread_id == UNTHREADED,
    )
    own = (
        sa.select(
            events.c.sender.label("user_id"),
            events.c.room_id.label("room_id"),
            sa.func.max(events.c.stream_ordering).label("mark"),
        )
        .where(events.c.sender.in_(users), events.c.stream_ordering <= sa.bindparam("upto"))
        .group_by(events.c.sender, events.c.room_id)
    )
    threaded = (
        sa.select(
            receipts.c.user_id,
            receipts.c.room_id,
            receipts.c.thread_id,
            sa.func.max(receipts.c.event_stream_ordering).label("mark"),
        )
        .where(
            receipts.c.user_id.in_(users),
            receipts.c.receipt_type.in_(READ_RECEIPTS),
            receipts.c.thread_id != UNTHREADED,
        )
        .group_by(receipts.c.user_id, receipts.c.room_id, receipts.c.thread_id)
    )
    if with_rooms:
        rooms: sa.BindParameter[list[str]] = sa.bindparam("rooms", expanding=True)
        unthreaded_receipts = unthreaded_receipts.where(receipts.c.room_id.in_(rooms))
        own = own.where(events.c.room_id.in_(rooms))
        threaded = threaded.where(receipts.c.room_id.in_(rooms))
    both = sa.union_all(unthreaded_receipts, own).subquery()
    unthreaded = (
        sa.select(both.c.user_id, both.c.room_id, sa.func.max(both.c.mark).label("mark"))
        .group_by(both.c.user_id, both.c.room_id)
        .subquery()
    )
    return unthreaded, threaded.subquery()


@functools.cache
def _count_unread(*, with_rooms: bool, with_ignored: bool) -> sa.Select[Any]:
    """Notifications and highlights of :users after their read marks, up to :upto, by user,
    room and thread."""
    unthreaded, threaded = _marks(with_rooms=with_rooms)
    epa = event_push_actions
    query = (
        sa.select(
            epa.c.user_id,
            epa.c.room_id,
            epa.c.thread_id,
            sa.func.count().label("n"),
            sa.func.sum(sa.case((epa.c.highlight, 1), else_=0)).label("h"),
            sa.func.min(epa.c.ts).label("oldest"),
        )
        .select_from(epa)
        .outerjoin(
            unthreaded,
            sa.and_(unthreaded.c.user_id == epa.c.user_id, unthreaded.c.room_id == epa.c.room_id),
        )
        .outerjoin(
            threaded,
            sa.and_(
                threaded.c.user_id == epa.c.user_id,
                threaded.c.room_id == epa.c.room_id,
                threaded.c.thread_id == epa.c.thread_id,
            ),
        )
        .where(
            epa.c.user_id.in_(sa.bindparam("users", expanding=True)),
            epa.c.stream_ordering <= sa.bindparam("upto"),
            epa.c.stream_ordering > sa.func.coalesce(unthreaded.c.mark, -1),
            epa.c.stream_ordering > sa.func.coalesce(threaded.c.mark, -1),
        )
        .group_by(epa.c.user_id, epa.c.room_id, epa.c.thread_id)
    )
    if with_rooms:
        query = query.where(epa.c.room_id.in_(sa.bindparam("rooms", expanding=True)))
    if with_ignored:
        # Only for users who ignore someone: the others' counts need no event row.
        query = query.where(
            ~sa.exists().where(
                events.c.event_id == epa.c.event_id,
                events.c.sender.in_(sa.bindparam("ignored", expanding=True)),
            )
        )
    return prepared(query)


# Every shape built at import, so that start-up compiles them (Database.prepare_statements).
for _with_rooms, _with_ignored in itertools.product((False, True), repeat=2):
    _count_unread(with_rooms=_with_rooms, with_ignored=_with_ignored)


class PushStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._action_windows: RangeReads[Mapping[str, tuple[WindowAction, ...]] | None] = (
            RangeReads(32, ACTION_WINDOW_MAX_EVENTS, {}, name="push_actions")
        )

    # --- counts and notifications ------------------------------------------------------------

    async def _read_marks(
        self, conn: Connection, user_id: str, room_ids: Sequence[str]
    ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """The user's read marks in the rooms: per room, and per (room, thread)."""
        unthreaded, threaded = _marks(with_rooms=True)
        params = {"users": [user_id], "rooms": list(room_ids), "upto": MAX_POSITION}
        marks = {
            r.room_id: int(r.mark)
            for r in (await conn.execute(sa.select(unthreaded), params)).all()
            if r.mark is not None
        }
        thread_marks = {
            (r.room_id, r.thread_id): int(r.mark)
            for r in (await conn.execute(sa.select(threaded), params)).all()
        }
        return marks, thread_marks

    async def count_unread(
        self,
        user_id: str,
        room_ids: Sequence[str] | None,
        ignored_senders: Collection[str] = (),
        upto: int | None = None,
    ) -> dict[str, dict[str, ThreadUnread]]:
        """room -> thread -> counts after the user's read marks, in one query; ``room_ids``
        None: every room. Rooms and threads with nothing are left out.
        Events of ``ignored_senders`` do not count. With ``upto``, the events up to that
        position only, and the user's own events up to there only move the marks (receipts
        are the latest: they are overwritten as they move)."""
        counted = await self.count_unread_of([user_id], room_ids, ignored_senders, upto)
        return counted.get(user_id, {})

    async def count_unread_of(
        self,
        user_ids: Sequence[str],
        room_ids: Sequence[str] | None,
        ignored_senders: Collection[str] = (),
        upto: int | None = None,
    ) -> dict[str, dict[str, dict[str, ThreadUnread]]]:
        """``count_unread`` of several users in one query: user -> room -> thread -> counts
        (``ignored_senders`` are ignored for all of them)."""
        if not user_ids or (room_ids is not None and not room_ids):
            return {}
        query = _count_unread(with_rooms=room_ids is not None, with_ignored=bool(ignored_senders))
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    query,
                    {
                        "users": list(user_ids),
                        "rooms": list(room_ids or ()),
                        "ignored": list(ignored_senders),
                        "upto": MAX_POSITION if upto is None else upto,
                    },
                )
            ).all()
        out: dict[str, dict[str, dict[str, ThreadUnread]]] = {}
        for r in rows:
            out.setdefault(r.user_id, {}).setdefault(r.room_id, {})[r.thread_id] = ThreadUnread(
                int(r.n), int(r.h or 0), int(r.oldest)
            )
        return out

    async def get_action_window(
        self, after: int, upto: int
    ) -> Mapping[str, tuple[WindowAction, ...]] | None:
        """The push actions of the events in ``(after, upto]``, by user (read-only); None
        when the range is longer than ``ACTION_WINDOW_MAX_EVENTS`` or holds more than
        ``ACTION_WINDOW_MAX_ROWS`` actions. ``upto`` must be committed: the answer is kept
        for everyone who asks for the same range."""
        return await self._action_windows.get(after, upto, self._read_action_window)

    async def _read_action_window(
        self, after: int, upto: int
    ) -> Mapping[str, tuple[WindowAction, ...]] | None:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    _ACTION_WINDOW,
                    {"after": after, "upto": upto, "limit": ACTION_WINDOW_MAX_ROWS + 1},
                )
            ).all()
        if len(rows) > ACTION_WINDOW_MAX_ROWS:
            return None
        by_user: dict[str, list[WindowAction]] = {}
        for r in rows:
            by_user.setdefault(r.user_id, []).append(
                WindowAction(r.room_id, r.thread_id, bool(r.highlight), int(r.ts))
            )
        return {user_id: tuple(actions) for user_id, actions in by_user.items()}

    async def get_notifications(
        self, user_id: str, before: int | None, limit: int, only_highlight: bool
    ) -> list[tuple[Notification, bool]]:
        """The user's notifications, newest first, each with whether it has been read."""
        epa = event_push_actions
        query = sa.select(epa).where(epa.c.user_id == user_id)
        if before is not None:
            query = query.where(epa.c.stream_ordering < before)
        if only_highlight:
            query = query.where(epa.c.highlight.is_(True))
        query = query.order_by(epa.c.stream_ordering.desc()).limit(limit)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
            marks, thread_marks = await self._read_marks(
                conn, user_id, sorted({r.room_id for r in rows})
            )
        out = []
        for r in rows:
            n = Notification(
                r.room_id,
                r.event_id,
                int(r.stream_ordering),
                r.thread_id,
                r.actions,
                bool(r.highlight),
                int(r.ts),
            )
            mark = max(marks.get(r.room_id, -1), thread_marks.get((r.room_id, r.thread_id), -1))
            out.append((n, n.stream_ordering <= mark))
        return out

    async def prune_push_actions(self, before_ts: int, limit: int) -> int:
        """Delete up to ``limit`` push actions made before ``before_ts`` (ms), oldest first;
        returns how many went.

        Bounded by the oldest ``limit`` rows in position order (the primary key's order, so
        no scan of the table): push actions are written as events are, so their ``ts`` grows
        with their position. A row younger than the cut-off among them (a clock that went
        back) only delays the older rows behind it until it is old enough itself.
        """
        epa = event_push_actions
        oldest = (
            sa.select(epa.c.stream_ordering, epa.c.user_id, epa.c.ts)
            .order_by(epa.c.stream_ordering, epa.c.user_id)
            .limit(limit)
            .subquery()
        )
        async with self._db.write() as conn:
            rows = (
                await conn.execute(
                    sa.select(oldest.c.stream_ordering, oldest.c.user_id).where(
                        oldest.c.ts < before_ts
                    )
                )
            ).all()
            if not rows:
                return 0
            # Whole positions below the last one, then the rows of the last one: two plain
            # range and key deletes, on both databases.
            last = max(int(r.stream_ordering) for r in rows)
            await conn.execute(
                sa.delete(epa).where(epa.c.stream_ordering < last, epa.c.ts < before_ts)
            )
            await conn.execute(
                sa.delete(epa).where(
                    epa.c.stream_ordering == last,
                    epa.c.user_id.in_([r.user_id for r in rows if int(r.stream_ordering) == last]),
                )
            )
        return len(rows)

    async def unread_among(self, user_id: str, stream_orderings: Collection[int]) -> set[int]:
        """Which of the user's notifications (by position) are still unread."""
        if not stream_orderings:
            return set()
        epa = event_push_actions
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(epa.c.room_id, epa.c.thread_id, epa.c.stream_ordering).where(
                        epa.c.user_id == user_id, epa.c.stream_ordering.in_(list(stream_orderings))
                    )
                )
            ).all()
            marks, thread_marks = await self._read_marks(
                conn, user_id, sorted({r.room_id for r in rows})
            )
        return {
            int(r.stream_ordering)
            for r in rows
            if int(r.stream_ordering)
            > max(marks.get(r.room_id, -1), thread_marks.get((r.room_id, r.thread_id), -1))
        }
