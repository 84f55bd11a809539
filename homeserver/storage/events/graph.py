"""The room graph: forward extremities, prev_events edges, auth_events edges and auth chains,
rejections.

Persisting an event records its edges and moves the room's forward extremities in the same
transaction (``record_graph``); the reads here answer what building an event and resolving
state ask of the graph.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from homeserver.core import jsonutil
from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.events.chains import index_event
from homeserver.storage.schema import (
    event_auth,
    event_auth_chain_links,
    event_auth_chains,
    event_edges,
    event_forward_extremities,
    events,
    rejections,
)

_f = event_forward_extremities


def referenced_ids(pdu: JsonDict, key: str) -> list[str]:
    """The event IDs of a PDU's ``prev_events`` or ``auth_events``, each once, in order: an
    element is an ID, or in room versions 1 and 2 an [ID, hashes] pair."""
    value = pdu.get(key)
    if not isinstance(value, list):
        return []
    found: dict[str, None] = {}
    for item in value:
        if isinstance(item, list) and item:
            item = item[0]
        if isinstance(item, str):
            found[item] = None
    return list(found)


@dataclass(frozen=True, slots=True)
class Extremity:
    """A forward extremity of a room, with what building on it needs."""

    event_id: str
    depth: int
    state_group: int


# Hot statements, built once: building a statement costs more than running it on SQLite.
# The usual move: the one prev_event was an extremity and the new event takes its row.
_MOVE_EXTREMITY = prepared(
    sa.update(_f)
    .where(_f.c.room_id == sa.bindparam("room"), _f.c.event_id == sa.bindparam("prev"))
    .values(event_id=sa.bindparam("new")),
    columns=("room", "prev", "new"),
)
_DROP_EXTREMITIES = prepared(
    sa.delete(_f).where(
        _f.c.room_id == sa.bindparam("room_id"),
        _f.c.event_id.in_(sa.bindparam("prevs", expanding=True)),
    )
)
_ADD_EXTREMITY = prepared(sa.insert(_f), columns=("room_id", "event_id"))
_ADD_EDGE = prepared(sa.insert(event_edges), columns=("event_id", "prev_event_id"))
_ADD_AUTH = prepared(sa.insert(event_auth), columns=("event_id", "auth_id"))
# An event's edges in one statement of one multi-row INSERT, up to this many (an event of
# a usual room has three or four auth events and one prev_event); more go row by row.
_ROWS_PER_INSERT = 12


@functools.lru_cache(maxsize=2 * _ROWS_PER_INSERT)
def _edges_insert(table: sa.Table, rows: int) -> sa.Insert:
    """``INSERT INTO table VALUES (:event_id, :p0), (:event_id, :p1), ...``: the event's
    ``rows`` edges to ``table`` (``event_edges`` or ``event_auth``)."""
    own, other = (c.name for c in table.c)
    values: list[dict[str, Any]] = [
        {own: sa.bindparam("event_id"), other: sa.bindparam(f"p{i}")} for i in range(rows)
    ]
    return prepared(sa.insert(table).values(values))


async def _add_edges(
    conn: Connection, table: sa.Table, row_by_row: Any, event_id: str, ids: Sequence[str]
) -> None:
    if len(ids) > _ROWS_PER_INSERT:
        own, other = (c.name for c in table.c)
        await conn.execute(row_by_row, [{own: event_id, other: i} for i in ids])
        return
    params: dict[str, object] = {f"p{n}": i for n, i in enumerate(ids)}
    params["event_id"] = event_id
    await conn.execute(_edges_insert(table, len(ids)), params)


_EXTREMITIES = prepared(
    sa.select(_f.c.event_id, events.c.depth, events.c.state_group)
    .join(events, events.c.event_id == _f.c.event_id)
    .where(_f.c.room_id == sa.bindparam("room_id"))
    .order_by(events.c.depth.desc(), events.c.stream_ordering.desc())
)


async def record_graph(
    conn: Connection,
    room_id: str,
    event_id: str,
    prevs: Sequence[str],
    auths: Sequence[str],
    *,
    link: bool = True,
    extremity: bool = True,
    state: tuple[str, str] | None = None,
    waiting: bool = False,
) -> None:
    """Inside the persisting transaction: the event's edges; with ``link``, its prev_events
    are no longer forward extremities of the room, and with ``extremity`` it is one (not
    when it has a child already, nor when it is soft-failed). A state event (``state``, its
    type and state key) takes its place in the chain cover index (``chains.py``; with
    ``waiting``, an event from another server, the events that waited for it too)."""
    moved = 0
    if link and extremity and len(prevs) == 1:
        result = await conn.execute(
            _MOVE_EXTREMITY, {"room": room_id, "prev": prevs[0], "new": event_id}
        )
        moved = result.rowcount
    elif link and prevs:
        await conn.execute(_DROP_EXTREMITIES, {"room_id": room_id, "prevs": list(prevs)})
    if extremity and not moved:
        await conn.execute(_ADD_EXTREMITY, {"room_id": room_id, "event_id": event_id})
    if prevs:
        await _add_edges(conn, event_edges, _ADD_EDGE, event_id, prevs)
    if auths:
        await _add_edges(conn, event_auth, _ADD_AUTH, event_id, auths)
    if state is not None:
        await index_event(conn, room_id, event_id, state[0], state[1], auths, waiting=waiting)


def _seed_ids(name: str, sqlite: bool) -> sa.Select[Any]:
    """The event IDs bound as one parameter: a JSON array on SQLite (``json_each``), an
    array on PostgreSQL (``unnest``). A state of thousands of entries is one parameter, not
    thousands: no statement to expand and plan anew for each length."""
    if sqlite:
        return sa.select(sa.column("value", sa.Text)).select_from(
            sa.func.json_each(sa.bindparam(name, type_=sa.Text))
        )
    return sa.select(sa.func.unnest(sa.bindparam(name, type_=postgresql.ARRAY(sa.Text))))


@functools.lru_cache(maxsize=32)
def _auth_chain_query(sets: int, sqlite: bool) -> sa.Select[Any]:
    """(set, event_id) for every event in the auth chain of each of ``sets`` sets of events
    (bound as ``ids0``, ``ids1``, ...): their auth events, theirs, and so on. ``UNION``
    stops at events already reached, so each event is visited once per set."""
    firsts = [
        sa.select(sa.literal(i).label("s"), event_auth.c.auth_id.label("event_id")).where(
            event_auth.c.event_id.in_(_seed_ids(f"ids{i}", sqlite))
        )
        for i in range(sets)
    ]
    if sets == 1:
        first = firsts[0]
    else:  # a recursive CTE unions onto a plain SELECT, not a compound one
        each = sa.union_all(*firsts).subquery("seeds")
        first = sa.select(each.c.s, each.c.event_id)
    seeds = first.cte("chain", recursive=True)
    step = event_auth.alias("step")
    chain = seeds.union(
        sa.select(seeds.c.s, step.c.auth_id).where(step.c.event_id == seeds.c.event_id)
    )
    return sa.select(chain.c.s, chain.c.event_id)


def _array(ids: list[str], sqlite: bool) -> object:
    """A list bound as one parameter (see ``_seed_ids``)."""
    return jsonutil.dumps_str(ids) if sqlite else ids


_INDEXED = {
    sqlite: prepared(
        sa.select(sa.func.count()).where(
            event_auth_chains.c.event_id.in_(_seed_ids("ids", sqlite))
        ),
        dialect="sqlite" if sqlite else "postgresql",
    )
    for sqlite in (True, False)
}


@functools.lru_cache(maxsize=64)
def _difference_query(sets: int, sqlite: bool) -> sa.Select[Any]:
    """From the chain cover index, the auth difference of ``sets`` sets of events, bound as
    ``ids0``, ``ids1``, ... less the events in every set, which are bound as the last
    group: the events in some of the sets' auth chains and not in all. All in the database:
    one round trip, and only the answer comes back.

    ``reach`` holds (set, chain, sequence number, own): the set's events (own = 1: the event
    itself is not in its auth chain, the events before it on its chain are), and what links
    from a reached chain at or below the number reached lead to, transitively. A set's auth
    chain is, on each chain reached, the events up to its highest number reached."""
    c = event_auth_chains
    links = event_auth_chain_links
    groups = sets + 1  # the last: the events common to all sets
    firsts = [
        sa.select(
            sa.literal(i).label("s"),
            c.c.chain_id,
            c.c.sequence_number.label("seq"),
            sa.literal(1).label("own"),
        ).where(c.c.event_id.in_(_seed_ids(f"ids{i}", sqlite)))
        for i in range(groups)
    ]
    # A recursive CTE unions onto a plain SELECT, not a compound one.
    each = sa.union_all(*firsts).subquery("seeds")
    first = sa.select(each.c.s, each.c.chain_id, each.c.seq, each.c.own)
    reach = first.cte("reach", recursive=True)
    reach = reach.union(
        sa.select(
            reach.c.s,
            links.c.target_chain_id,
            links.c.target_sequence_number,
            sa.literal(0),
        ).where(
            links.c.origin_chain_id == reach.c.chain_id,
            links.c.origin_sequence_number <= reach.c.seq,
        )
    )
    best = (
        sa.select(reach.c.s, reach.c.chain_id, sa.func.max(reach.c.seq - reach.c.own).label("top"))
        .group_by(reach.c.s, reach.c.chain_id)
        .subquery("best")
    )
    # On each chain, a set reaches the higher of its own events' reach and the common
    # events' (walked once, not once per set); the difference is above the lowest of the
    # sets' reach (0 when some set reaches it not), up to the highest.
    own = best.c.s < sets
    common = sa.func.coalesce(sa.func.max(sa.case((~own, best.c.top))), 0)
    lowest = sa.case(
        (sa.func.sum(sa.case((own, 1), else_=0)) < sets, 0),
        else_=sa.func.min(sa.case((own, best.c.top))),
    )
    spans = (
        sa.select(
            best.c.chain_id,
            sa.case((common > lowest, common), else_=lowest).label("low"),
            sa.func.max(best.c.top).label("high"),
        )
        .group_by(best.c.chain_id)
        .subquery("spans")
    )
    return sa.select(c.c.event_id).join(
        spans,
        sa.and_(
            c.c.chain_id == spans.c.chain_id,
            c.c.sequence_number > spans.c.low,
            c.c.sequence_number <= spans.c.high,
        ),
    )


class GraphReads:
    """The event store's reads of the room graph (a part of ``EventStore``)."""

    _db: Database

    async def get_forward_extremities(self, room_id: str) -> list[Extremity]:
        """The room's forward extremities, deepest (then newest) first."""
        async with self._db.read() as conn:
            rows = (await conn.execute(_EXTREMITIES, {"room_id": room_id})).all()
        return [Extremity(r.event_id, int(r.depth), int(r.state_group)) for r in rows]

    async def get_prev_event_ids(self, event_id: str) -> list[str]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(event_edges.c.prev_event_id)
                    .where(event_edges.c.event_id == event_id)
                    .order_by(event_edges.c.prev_event_id)
                )
            ).all()
        return [r.prev_event_id for r in rows]

    async def get_auth_event_ids(self, event_id: str) -> list[str]:
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(event_auth.c.auth_id)
                    .where(event_auth.c.event_id == event_id)
                    .order_by(event_auth.c.auth_id)
                )
            ).all()
        return [r.auth_id for r in rows]

    async def get_auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        """The auth chain of the events (spec: their auth events, theirs, and so on; not the
        events themselves), in one recursive query. Not from the chain cover index: the
        answer is every event of the chain either way, and ``bench/auth_chain.py`` found the
        index no faster at it on SQLite, nor clearly on PostgreSQL."""
        ids = list(event_ids)
        async with self._db.read() as conn:
            return (await self._auth_chains(conn, [ids]))[0]

    async def get_auth_chain_difference(self, state_sets: Sequence[Collection[str]]) -> set[str]:
        """spec, state resolution v2 "Auth difference": the union of the auth chains of the
        events of each state set, less their intersection: from the chain cover index, chain
        by chain the sequence numbers above the lowest reach of the sets up to the highest."""
        sets = [list(s) for s in state_sets]
        if not sets:
            return set()
        return await self._from_index(sets)

    async def _from_index(self, sets: list[list[str]]) -> set[str]:
        """The auth difference from the index when it holds every event of the sets; else
        from the recursive query over ``event_auth`` (an event waiting for its auth events,
        an event we do not have)."""
        sqlite = self._db.is_sqlite
        ids = sorted({i for s in sets for i in s})
        async with self._db.read() as conn:
            indexed = (await conn.execute(_INDEXED[sqlite], {"ids": _array(ids, sqlite)})).scalar()
            if indexed == len(ids):
                # The events in every set are walked once (the last group).
                common = set(sets[0]).intersection(*sets[1:])
                groups = [[i for i in s if i not in common] for s in sets] + [sorted(common)]
                params = {f"ids{i}": _array(g, sqlite) for i, g in enumerate(groups)}
                rows = await conn.execute(_difference_query(len(sets), sqlite), params)
                return {r.event_id for r in rows}
            chains = await self._auth_chains(conn, sets)
        union: set[str] = set().union(*chains)
        return union - chains[0].intersection(*chains[1:])

    async def _auth_chains(self, conn: Connection, sets: Sequence[list[str]]) -> list[set[str]]:
        """The fallback for events not in the index: the recursive query over ``event_auth``."""
        sqlite = self._db.is_sqlite
        params = {f"ids{i}": _array(ids, sqlite) for i, ids in enumerate(sets)}
        rows = (await conn.execute(_auth_chain_query(len(sets), sqlite), params)).all()
        chains: list[set[str]] = [set() for _ in sets]
        for r in rows:
            chains[int(r.s)].add(r.event_id)
        return chains

    async def get_rejections(self, event_ids: Iterable[str]) -> dict[str, str]:
        """Which of the events were rejected, and why (never the auth event of another)."""
        ids = list(event_ids)
        if not ids:
            return {}
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(rejections.c.event_id, rejections.c.reason).where(
                        rejections.c.event_id.in_(ids)
                    )
                )
            ).all()
        return {r.event_id: r.reason for r in rows}

    async def get_rejection(self, event_id: str) -> str | None:
        """Why the event was rejected, or None when it was not (or is unknown)."""
        async with self._db.read() as conn:
            value = (
                await conn.execute(
                    sa.select(rejections.c.reason).where(rejections.c.event_id == event_id)
                )
            ).scalar()
        return value if isinstance(value, str) else None
