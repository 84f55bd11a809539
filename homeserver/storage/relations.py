"""Relations between events (`m.relates_to`): indexed as events persist, read for aggregations.

An event with a well-formed `m.relates_to` (a `rel_type` and a parent `event_id`) gets one
row in ``event_relations``, written in the transaction that persists it; redacting it deletes
the row, since a redacted child no longer relates to anything (spec: "Aggregations of child
events"). Whether a relation is *valid* for an aggregation (an edit by the original sender,
...) is for the service to judge: the index only records what the event claims.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.schema import event_relations, events, room_memberships

REPLACE = "m.replace"
ANNOTATION = "m.annotation"
THREAD = "m.thread"
REFERENCE = "m.reference"

_END = 2**62  # past every stream position


@dataclass(frozen=True, slots=True)
class Relation:
    rel_type: str
    parent_id: str
    key: str | None  # m.annotation only


@dataclass(frozen=True, slots=True)
class Child:
    """A child event of a relation, as the index knows it."""

    event_id: str
    parent_id: str
    rel_type: str
    type: str
    sender: str
    origin_server_ts: int
    stream_ordering: int
    depth: int = 0  # the child's depth (its place in the room's topological order)


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    root_id: str
    count: int
    latest_event_id: str
    latest_stream_ordering: int
    participated: bool  # the user sent an event into the thread (not counting the root)


@dataclass(frozen=True, slots=True)
class ChildrenOf:
    """What the bundled aggregations of a batch of parents are made from."""

    edits: dict[str, list[Child]]  # parent -> its m.replace children, any sender
    references: dict[str, list[str]]  # parent -> m.reference children, oldest first
    threads: dict[str, ThreadSummary]  # root -> its summary


@dataclass(frozen=True, slots=True)
class ThreadRoot:
    root_id: str
    latest_stream_ordering: int
    latest_depth: int  # the thread's latest event, in topological order


@dataclass(frozen=True, slots=True)
class TimelineBounds:
    """Where a page of a room's timeline lies (as ``/messages`` reads it): ``below`` and
    ``above`` are topological, ``(depth, stream) <= below`` and ``> above``; ``after`` and
    ``upto`` are positions of the events stream, ``after < stream <= upto``."""

    below: tuple[int, int] | None = None
    above: tuple[int, int] | None = None
    after: int | None = None
    upto: int | None = None


def parse_relation(
    content: object, *, event_type: str | None = None, is_state: bool = False
) -> Relation | None:
    """The relation an event's content declares, or None if it declares none or a malformed one.

    An edit needs `m.new_content` (in the clear, unless the event is `m.room.encrypted`, whose
    payload carries it) and may not be a state event (spec: "Validity of replacement events").
    """
    if not isinstance(content, dict):
        return None
    relates_to = content.get("m.relates_to")
    if not isinstance(relates_to, dict):
        return None
    rel_type = relates_to.get("rel_type")
    parent_id = relates_to.get("event_id")
    if (
        not isinstance(rel_type, str)
        or not rel_type
        or not isinstance(parent_id, str)
        or not parent_id.startswith("$")
    ):
        return None
    key = relates_to.get("key")
    if rel_type == ANNOTATION and not isinstance(key, str):
        return None
    if rel_type == REPLACE and (
        is_state
        or (event_type != "m.room.encrypted" and not isinstance(content.get("m.new_content"), dict))
    ):
        return None
    return Relation(rel_type, parent_id, key if rel_type == ANNOTATION else None)


async def record_relation(
    conn: Connection, pdu: JsonDict, event_id: str, room_id: str, position: int, redacts: str | None
) -> None:
    """Called inside ``EventStore.persist_event``'s transaction for every event.

    Indexes the event's own relation, and drops the relation of the event it redacts.
    """
    if pdu.get("type") == "m.room.redaction" and redacts is not None:
        await conn.execute(
            sa.delete(event_relations).where(
                event_relations.c.event_id == redacts, event_relations.c.room_id == room_id
            )
        )
    relation = parse_relation(
        pdu.get("content"), event_type=pdu.get("type"), is_state="state_key" in pdu
    )
    if relation is None:
        return
    await conn.execute(
        sa.insert(event_relations).values(
            event_id=event_id,
            relates_to_id=relation.parent_id,
            rel_type=relation.rel_type,
            room_id=room_id,
            type=pdu["type"],
            sender=pdu["sender"],
            aggregation_key=relation.key,
            origin_server_ts=pdu["origin_server_ts"],
            stream_ordering=position,
        )
    )


def _child(r: sa.Row[tuple[object, ...]]) -> Child:
    return Child(
        r.event_id,
        r.relates_to_id,
        r.rel_type,
        r.type,
        r.sender,
        int(r.origin_server_ts),
        int(r.stream_ordering),
        int(getattr(r, "depth", 0)),
    )


_r = event_relations


_ANY_CHILD = prepared(
    sa.select(_r.c.relates_to_id)
    .where(
        _r.c.relates_to_id.in_(sa.bindparam("ids", expanding=True)),
        _r.c.room_id == sa.bindparam("room_id"),
    )
    .limit(1)
)


class RelationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def has_annotation(self, parent_id: str, sender: str, event_type: str, key: str) -> bool:
        """Whether ``sender`` already annotated the parent with this type and key."""
        async with self._db.read() as conn:
            found = (
                await conn.execute(
                    sa.select(_r.c.event_id)
                    .where(
                        _r.c.relates_to_id == parent_id,
                        _r.c.rel_type == ANNOTATION,
                        _r.c.sender == sender,
                        _r.c.type == event_type,
                        _r.c.aggregation_key == key,
                    )
                    .limit(1)
                )
            ).first()
        return found is not None

    async def get_children(
        self,
        room_id: str,
        parent_id: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        bounds: TimelineBounds,
        backwards: bool,
        limit: int,
        depth: int,
    ) -> list[Child]:
        """Children of the parent within ``bounds``, in the room's topological order
        (depth, then stream position; history backfilled from other servers in its place),
        newest first when ``backwards``; with ``depth`` > 1 also their children, down to
        that many levels.

        The filters apply at every level: a child reached only through a non-matching one is
        left out (spec: "Relationships API").
        """

        def matching(table: sa.FromClause) -> list[sa.ColumnElement[bool]]:
            conditions = [table.c.room_id == room_id]
            if rel_type is not None:
                conditions.append(table.c.rel_type == rel_type)
            if event_type is not None:
                conditions.append(table.c.type == event_type)
            return conditions

        columns = (
            _r.c.event_id,
            _r.c.relates_to_id,
            _r.c.rel_type,
            _r.c.type,
            _r.c.sender,
            _r.c.origin_server_ts,
            _r.c.stream_ordering,
        )
        tree = (
            sa.select(*columns, sa.literal(1).label("level"))
            .where(_r.c.relates_to_id == parent_id, *matching(_r))
            .cte("tree", recursive=True)
        )
        if depth > 1:
            child = _r.alias("child")
            tree = tree.union_all(
                sa.select(
                    child.c.event_id,
                    child.c.relates_to_id,
                    child.c.rel_type,
                    child.c.type,
                    child.c.sender,
                    child.c.origin_server_ts,
                    child.c.stream_ordering,
                    (tree.c.level + 1).label("level"),
                ).where(
                    child.c.relates_to_id == tree.c.event_id, tree.c.level < depth, *matching(child)
                )
            )
        place = (events.c.depth, tree.c.stream_ordering)
        query = sa.select(tree, events.c.depth).join(events, events.c.event_id == tree.c.event_id)
        if bounds.after is not None:
            query = query.where(tree.c.stream_ordering > bounds.after)
        if bounds.upto is not None:
            query = query.where(tree.c.stream_ordering <= bounds.upto)
        if bounds.below is not None:
            query = query.where(sa.tuple_(*place) <= sa.tuple_(*map(sa.literal, bounds.below)))
        if bounds.above is not None:
            query = query.where(sa.tuple_(*place) > sa.tuple_(*map(sa.literal, bounds.above)))
        order = [c.desc() if backwards else c.asc() for c in place]
        async with self._db.read() as conn:
            rows = (await conn.execute(query.order_by(*order).limit(limit))).all()
        return [_child(r) for r in rows]

    async def get_children_of(
        self,
        room_id: str,
        parent_ids: Sequence[str],
        user_id: str,
        *,
        ignored: Collection[str] = (),
    ) -> ChildrenOf:
        """Edits, references and thread summaries of a batch of parents, in two queries.

        Children sent by ``ignored`` users are left out, and so are those sent after
        ``user_id`` left the room or was banned: they see the room as it was then.
        """
        if not parent_ids:
            return ChildrenOf({}, {}, {})
        ids = list(dict.fromkeys(parent_ids))
        async with self._db.read() as conn:
            # Most events have no children: one cheap indexed probe instead of two queries.
            if (await conn.execute(_ANY_CHILD, {"ids": ids, "room_id": room_id})).first() is None:
                return ChildrenOf({}, {}, {})
        left_at = (
            sa.select(room_memberships.c.stream_ordering)
            .where(
                room_memberships.c.room_id == room_id,
                room_memberships.c.user_id == user_id,
                room_memberships.c.membership.in_(["leave", "ban"]),
            )
            .scalar_subquery()
        )

        def scope(table: sa.FromClause) -> list[sa.ColumnElement[bool]]:
            conditions = [
                table.c.relates_to_id.in_(ids),
                table.c.room_id == room_id,
                table.c.stream_ordering <= sa.func.coalesce(left_at, _END),
            ]
            if ignored:
                conditions.append(table.c.sender.not_in(list(ignored)))
            return conditions

        mine = sa.func.max(sa.case((_r.c.sender == user_id, 1), else_=0))
        summary = (
            sa.select(
                _r.c.relates_to_id,
                sa.func.count().label("n"),
                sa.func.max(_r.c.stream_ordering).label("latest"),
                mine.label("mine"),
            )
            .where(_r.c.rel_type == THREAD, *scope(_r))
            .group_by(_r.c.relates_to_id)
            .subquery("summary")
        )
        # Each thread's latest reply in the room's topological order (depth, then stream),
        # as /messages and /threads order it: a reply from a fork that arrives late, or
        # history backfilled, takes its place instead of counting as the newest.
        ranked = (
            sa.select(
                _r.c.relates_to_id,
                _r.c.event_id,
                sa.func.row_number()
                .over(
                    partition_by=_r.c.relates_to_id,
                    order_by=(events.c.depth.desc(), _r.c.stream_ordering.desc()),
                )
                .label("place"),
            )
            .join(events, events.c.event_id == _r.c.event_id)
            .where(_r.c.rel_type == THREAD, *scope(_r))
            .subquery("ranked")
        )
        threads_query = sa.select(summary, ranked.c.event_id).join(
            ranked,
            sa.and_(ranked.c.relates_to_id == summary.c.relates_to_id, ranked.c.place == 1),
        )
        others_query = (
            sa.select(_r)
            .where(_r.c.rel_type.in_([REPLACE, REFERENCE]), *scope(_r))
            .order_by(_r.c.stream_ordering)
        )
        async with self._db.read() as conn:
            others = (await conn.execute(others_query)).all()
            thread_rows = (await conn.execute(threads_query)).all()
        edits: dict[str, list[Child]] = {}
        references: dict[str, list[str]] = {}
        for r in others:
            if r.rel_type == REPLACE:
                edits.setdefault(r.relates_to_id, []).append(_child(r))
            else:
                references.setdefault(r.relates_to_id, []).append(r.event_id)
        threads = {
            r.relates_to_id: ThreadSummary(
                r.relates_to_id, int(r.n), r.event_id, int(r.latest), bool(r.mine)
            )
            for r in thread_rows
        }
        return ChildrenOf(edits, references, threads)

    async def get_thread_roots(
        self,
        room_id: str,
        *,
        user_id: str,
        participated_only: bool,
        below: tuple[int, int] | None,
        latest_upto: int | None,
        upto: int | None,
        limit: int,
    ) -> list[ThreadRoot]:
        """Thread roots of the room by latest activity, newest first: the latest event of
        each thread in the room's topological order (depth, then stream position, so history
        backfilled from other servers counts in its place), with the thread's latest at or
        before ``below`` (and, given ``latest_upto``, at or before that stream position);
        ``participated_only``: threads the user started or wrote in.
        Thread events after the stream position ``upto`` (the user left, or a stream token's
        view of the room) do not count.
        """
        mine = sa.func.max(sa.case((_r.c.sender == user_id, 1), else_=0)).over(
            partition_by=_r.c.relates_to_id
        )
        rank = (
            sa.func.row_number()
            .over(
                partition_by=_r.c.relates_to_id,
                order_by=(events.c.depth.desc(), _r.c.stream_ordering.desc()),
            )
            .label("rank")
        )
        threads = (
            sa.select(
                _r.c.relates_to_id,
                _r.c.stream_ordering.label("latest"),
                events.c.depth.label("latest_depth"),
                mine.label("mine"),
                rank,
            )
            .join(events, events.c.event_id == _r.c.event_id)
            .where(_r.c.room_id == room_id, _r.c.rel_type == THREAD)
        )
        if upto is not None:
            threads = threads.where(_r.c.stream_ordering <= upto)
        ranked = threads.subquery("threads")
        root = events.alias("root")
        place = (ranked.c.latest_depth, ranked.c.latest)
        # Only roots this server has (and in this room): a root is what the list returns.
        query = (
            sa.select(ranked.c.relates_to_id, ranked.c.latest, ranked.c.latest_depth)
            .join(root, root.c.event_id == ranked.c.relates_to_id)
            .where(ranked.c.rank == 1, root.c.room_id == room_id)
        )
        if below is not None:
            query = query.where(sa.tuple_(*place) <= sa.tuple_(*map(sa.literal, below)))
        if latest_upto is not None:
            query = query.where(ranked.c.latest <= latest_upto)
        if participated_only:
            query = query.where(sa.or_(ranked.c.mine == 1, root.c.sender == user_id))
        query = query.order_by(*(c.desc() for c in place)).limit(limit)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [ThreadRoot(r.relates_to_id, int(r.latest), int(r.latest_depth)) for r in rows]
