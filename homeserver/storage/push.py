"""Push rules, push actions (with the unread counts they make), pushers and their queue."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.schema import (
    event_push_actions,
    events,
    presence,
    push_cursors,
    push_queue,
    push_rule_defaults,
    push_rules,
    pushers,
    receipts,
    room_memberships,
    stream_positions,
)
from homeserver.storage.shared_reads import RangeReads

READ_RECEIPTS = ("m.read", "m.read.private")
UNTHREADED = ""  # receipts.thread_id of an unthreaded receipt
PUSHER_CURSOR = "pusher"


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A user-defined push rule as stored (``priority``: higher is evaluated first)."""

    kind: str
    rule_id: str
    priority: int
    actions: tuple[Any, ...]
    enabled: bool
    conditions: tuple[JsonDict, ...] | None
    pattern: str | None


@dataclass(frozen=True, slots=True)
class DefaultChange:
    """What a user changed in a server-default rule (``None``: as the server has it)."""

    enabled: bool | None
    actions: tuple[Any, ...] | None


@dataclass(frozen=True, slots=True)
class UserRules:
    """Everything stored about one user's push rules."""

    rules: tuple[StoredRule, ...] = ()
    defaults: Mapping[str, DefaultChange] | None = None


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


_JOINED_MEMBERS = prepared(
    sa.select(room_memberships.c.user_id, room_memberships.c.displayname).where(
        room_memberships.c.room_id == sa.bindparam("room_id"),
        room_memberships.c.membership == "join",
    )
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
            RangeReads(32, ACTION_WINDOW_MAX_EVENTS, {})
        )

    # --- rules -----------------------------------------------------------------------------

    async def get_user_rules(self, user_ids: Collection[str]) -> dict[str, UserRules]:
        """Stored rules of each user who has any (others are left out), in two queries."""
        if not user_ids:
            return {}
        ids = list(user_ids)
        async with self._db.read() as conn:
            own = (
                await conn.execute(sa.select(push_rules).where(push_rules.c.user_id.in_(ids)))
            ).all()
            changed = (
                await conn.execute(
                    sa.select(push_rule_defaults).where(push_rule_defaults.c.user_id.in_(ids))
                )
            ).all()
        rules: dict[str, list[StoredRule]] = {}
        for r in own:
            rules.setdefault(r.user_id, []).append(
                StoredRule(
                    r.kind,
                    r.rule_id,
                    int(r.priority),
                    tuple(r.actions),
                    bool(r.enabled),
                    tuple(r.conditions) if r.conditions is not None else None,
                    r.pattern,
                )
            )
        defaults: dict[str, dict[str, DefaultChange]] = {}
        for r in changed:
            defaults.setdefault(r.user_id, {})[r.rule_id] = DefaultChange(
                r.enabled, tuple(r.actions) if r.actions is not None else None
            )
        return {
            u: UserRules(tuple(rules.get(u, ())), defaults.get(u))
            for u in set(rules) | set(defaults)
        }

    async def put_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        *,
        conditions: Sequence[JsonDict] | None,
        pattern: str | None,
        actions: Sequence[Any],
        before: str | None,
        after: str | None,
    ) -> str | None:
        """Add or replace a user rule, placed before/after another (or first when new, in
        place when it exists). Returns None, or the ``before``/``after`` rule ID not found."""
        async with self._db.write() as conn:
            rows = (
                await conn.execute(
                    sa.select(push_rules.c.rule_id, push_rules.c.priority)
                    .where(push_rules.c.user_id == user_id, push_rules.c.kind == kind)
                    .order_by(push_rules.c.priority.desc(), push_rules.c.rule_id)
                )
            ).all()
            order = [r.rule_id for r in rows]
            existed = rule_id in order
            position = order.index(rule_id) if existed else 0
            order = [r for r in order if r != rule_id]
            if before is not None:
                if before not in order:
                    return before
                position = order.index(before)
            elif after is not None:
                if after not in order:
                    return after
                position = order.index(after) + 1
            order.insert(position, rule_id)
            old = {r.rule_id: int(r.priority) for r in rows}
            new = {rid: len(order) - i for i, rid in enumerate(order)}
            for rid, priority in new.items():
                if rid != rule_id and old.get(rid) != priority:
                    await conn.execute(
                        sa.update(push_rules)
                        .where(
                            push_rules.c.user_id == user_id,
                            push_rules.c.kind == kind,
                            push_rules.c.rule_id == rid,
                        )
                        .values(priority=priority)
                    )
            await conn.execute(
                self._db.upsert(
                    push_rules,
                    {
                        "user_id": user_id,
                        "kind": kind,
                        "rule_id": rule_id,
                        "priority": new[rule_id],
                        "conditions": list(conditions) if conditions is not None else None,
                        "pattern": pattern,
                        "actions": list(actions),
                        "enabled": True,
                    },
                    keys=("user_id", "kind", "rule_id"),
                )
            )
        return None

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.delete(push_rules).where(
                    push_rules.c.user_id == user_id,
                    push_rules.c.kind == kind,
                    push_rules.c.rule_id == rule_id,
                )
            )
        return bool(result.rowcount)

    async def update_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        *,
        enabled: bool | None = None,
        actions: Sequence[Any] | None = None,
    ) -> bool:
        values: dict[str, Any] = {}
        if enabled is not None:
            values["enabled"] = enabled
        if actions is not None:
            values["actions"] = list(actions)
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(push_rules)
                .where(
                    push_rules.c.user_id == user_id,
                    push_rules.c.kind == kind,
                    push_rules.c.rule_id == rule_id,
                )
                .values(**values)
            )
        return bool(result.rowcount)

    async def change_default(
        self,
        user_id: str,
        rule_id: str,
        *,
        enabled: bool | None = None,
        actions: Sequence[Any] | None = None,
    ) -> None:
        row: dict[str, Any] = {"user_id": user_id, "rule_id": rule_id}
        update = []
        if enabled is not None:
            row["enabled"] = enabled
            update.append("enabled")
        if actions is not None:
            row["actions"] = list(actions)
            update.append("actions")
        async with self._db.write() as conn:
            await conn.execute(
                self._db.upsert(push_rule_defaults, row, keys=("user_id", "rule_id"), update=update)
            )

    # --- members, for evaluation -------------------------------------------------------------

    async def get_joined_members(self, room_id: str) -> list[tuple[str, str | None]]:
        """(user_id, display name in the room) of every joined member."""
        async with self._db.read() as conn:
            rows = (await conn.execute(_JOINED_MEMBERS, {"room_id": room_id})).all()
        return [(r.user_id, r.displayname) for r in rows]

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
                    await conn.execute(
                        sa.select(stream_positions.c.position).where(
                            stream_positions.c.stream == Stream.EVENTS.value
                        )
                    )
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
