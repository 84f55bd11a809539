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


@functools.lru_cache(maxsize=2)
def _positions_query(sqlite: bool) -> sa.Select[Any]:
    """The places of the events ``ids`` in the chain cover index."""
    c = event_auth_chains
    return sa.select(c.c.event_id, c.c.chain_id, c.c.sequence_number).where(
        c.c.event_id.in_(_seed_ids("ids", sqlite))
    )


@functools.lru_cache(maxsize=2)
def _links_query(sqlite: bool) -> sa.Select[Any]:
    """The links of the chains ``chains`` and of every chain they link to, transitively."""
    links = event_auth_chain_links
    first = sa.select(_seed_ids("chains", sqlite).subquery().c[0].label("chain_id"))
    reached = first.cte("reached", recursive=True)
    reached = reached.union(
        sa.select(links.c.target_chain_id).where(links.c.origin_chain_id == reached.c.chain_id)
    )
    return sa.select(
        links.c.origin_chain_id,
        links.c.origin_sequence_number,
        links.c.target_chain_id,
        links.c.target_sequence_number,
    ).join(reached, links.c.origin_chain_id == reached.c.chain_id)


@functools.lru_cache(maxsize=2)
def _ranges_query(sqlite: bool) -> sa.Select[Any]:
    """The event IDs of chains' sequence number ranges (low, high]: on SQLite a JSON array
    ``ranges`` of [chain, low, high]; on PostgreSQL three arrays ``chains``, ``lows``,
    ``highs``."""
    c = event_auth_chains
    if sqlite:
        each = sa.func.json_each(sa.bindparam("ranges", type_=sa.Text)).table_valued("value")
        value = each.c.value
        ranges = sa.select(
            sa.func.json_extract(value, "$[0]").label("chain_id"),
            sa.func.json_extract(value, "$[1]").label("low"),
            sa.func.json_extract(value, "$[2]").label("high"),
        ).subquery("ranges")
    else:
        ranges = (
            sa.select(
                sa.func.unnest(
                    sa.bindparam("chains", type_=postgresql.ARRAY(sa.Text)),
                    sa.bindparam("lows", type_=postgresql.ARRAY(sa.Integer)),
                    sa.bindparam("highs", type_=postgresql.ARRAY(sa.Integer)),
                )
                .table_valued("chain_id", "low", "high")
                .render_derived()
            )
        ).subquery("ranges")
    return sa.select(c.c.event_id).join(
        ranges,
        sa.and_(
            c.c.chain_id == ranges.c.chain_id,
            c.c.sequence_number > ranges.c.low,
            c.c.sequence_number <= ranges.c.high,
        ),
    )


def _reach(
    seeds: Iterable[tuple[str, int]], links: dict[str, list[tuple[int, str, int]]]
) -> dict[str, int]:
    """The highest sequence number reached on each chain by the auth chains of the events at
    ``seeds``: an event reaches its own chain below it, and through the links from its chain
    at or below it (sorted by origin), further chains, transitively."""
    reached: dict[str, int] = {}
    followed: dict[str, int] = {}
    todo: list[tuple[str, int]] = []
    for chain, seq in seeds:
        if seq > 1:
            reached[chain] = max(reached.get(chain, 0), seq - 1)
        todo.append((chain, seq))
    while todo:
        chain, seq = todo.pop()
        if followed.get(chain, 0) >= seq:
            continue
        followed[chain] = seq
        for origin, target, target_seq in links.get(chain, ()):
            if origin > seq:
                break
            if target_seq > reached.get(target, 0):
                reached[target] = target_seq
            if target_seq > followed.get(target, 0):
                todo.append((target, target_seq))
    return reached


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
        events themselves): from the chain cover index when the events are all in it."""
        ids = list(event_ids)
        async with self._db.read() as conn:
            reach = await self._reach(conn, [ids])
            if reach is None:
                return (await self._auth_chains(conn, [ids]))[0]
            return await self._chain_ranges(conn, {c: (0, s) for c, s in reach[0].items()})

    async def get_auth_chain_difference(self, state_sets: Sequence[Collection[str]]) -> set[str]:
        """spec, state resolution v2 "Auth difference": the union of the auth chains of the
        events of each state set, less their intersection. From the chain cover index, chain
        by chain the sequence numbers above the lowest reach of the sets up to the highest;
        the recursive query when some event is not indexed."""
        sets = [list(s) for s in state_sets]
        if not sets:
            return set()
        async with self._db.read() as conn:
            reach = await self._reach(conn, sets)
            if reach is None:
                chains = await self._auth_chains(conn, sets)
                union: set[str] = set().union(*chains)
                return union - chains[0].intersection(*chains[1:])
            ranges: dict[str, tuple[int, int]] = {}
            for chain in set().union(*reach):
                seqs = [r.get(chain, 0) for r in reach]
                if min(seqs) < max(seqs):
                    ranges[chain] = (min(seqs), max(seqs))
            return await self._chain_ranges(conn, ranges)

    async def _reach(
        self, conn: Connection, sets: Sequence[list[str]]
    ) -> list[dict[str, int]] | None:
        """For each set, how far its auth chain reaches on each chain (the highest sequence
        number in it); None when some event of the sets is not indexed."""
        sqlite = self._db.is_sqlite
        ids = sorted({i for s in sets for i in s})
        rows = (await conn.execute(_positions_query(sqlite), {"ids": _array(ids, sqlite)})).all()
        places = {r.event_id: (r.chain_id, int(r.sequence_number)) for r in rows}
        if len(places) < len(ids):
            return None
        seeds = sorted({c for c, _ in places.values()})
        links: dict[str, list[tuple[int, str, int]]] = {}
        for r in await conn.execute(_links_query(sqlite), {"chains": _array(seeds, sqlite)}):
            links.setdefault(r.origin_chain_id, []).append(
                (int(r.origin_sequence_number), r.target_chain_id, int(r.target_sequence_number))
            )
        for found in links.values():
            found.sort()
        return [_reach([places[i] for i in s], links) for s in sets]

    async def _chain_ranges(self, conn: Connection, ranges: dict[str, tuple[int, int]]) -> set[str]:
        """The events of each chain whose sequence numbers are above the first number of its
        range, up to the second."""
        if not ranges:
            return set()
        sqlite = self._db.is_sqlite
        chains = sorted(ranges)
        if sqlite:
            params: dict[str, object] = {
                "ranges": jsonutil.dumps_str([[c, *ranges[c]] for c in chains])
            }
        else:
            params = {
                "chains": chains,
                "lows": [ranges[c][0] for c in chains],
                "highs": [ranges[c][1] for c in chains],
            }
        rows = await conn.execute(_ranges_query(sqlite), params)
        return {r.event_id for r in rows}

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
