"""Reading events: by ID, a room's timeline, and the events stream's shared windows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from homeserver.storage.database import Database, prepared
from homeserver.storage.events.model import EVENT_COLUMNS, StoredEvent, to_event
from homeserver.storage.schema import (
    BACKFILL_BASE,
    event_relations,
    event_txns,
    events,
    room_memberships,
)
from homeserver.storage.shared_reads import RangeReads

# A sync from at most this many positions back reads the events stream in between once for
# everyone (a StreamWindow); from further back it asks about its own rooms only.
WINDOW_MAX_EVENTS = 100
# A window of at most this many positions holds the events themselves: a sync's timeline
# from that far back is taken from it, not read (so at most this many events per window).
SHARED_TIMELINE_MAX_EVENTS = 20
# Windows kept, weighed as one each plus the events they hold.
WINDOWS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class StreamWindow:
    """The events stream between two committed positions, when few events lie there: the
    rooms that have events, the users whose membership of a room changed, the events that
    got a child (a relation to them: edit, reaction, thread reply, reference), and the rooms
    each sender sent to (read-only).

    A short window also holds the rows of its events (``rows``, oldest first), which become
    events a room at a time (``events_of``), when a sync first asks for that room's.
    """

    rooms: frozenset[str]
    members: frozenset[str]
    parents: frozenset[str]
    senders: Mapping[str, frozenset[str]]
    rows: tuple[Any, ...] | None = None
    _parsed: dict[str, tuple[StoredEvent, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def events_of(self, room_id: str) -> tuple[StoredEvent, ...] | None:
        """The room's events in the window, oldest first (shared: do not change them); None
        when the window does not hold its events."""
        if self.rows is None:
            return None
        found = self._parsed.get(room_id)
        if found is None:
            found = self._parsed[room_id] = tuple(
                to_event(r) for r in self.rows if r.room_id == room_id
            )
        return found

    @property
    def weight(self) -> int:
        return 1 + len(self.rows or ())


EMPTY_WINDOW = StreamWindow(frozenset(), frozenset(), frozenset(), {}, ())


# Hot statements, built once: building a statement costs more than running it on SQLite.
_e = events
_EVENTS_BY_ID = prepared(
    sa.select(*EVENT_COLUMNS).where(_e.c.event_id.in_(sa.bindparam("ids", expanding=True)))
)
_TXN = prepared(
    sa.select(event_txns.c.event_id).where(
        event_txns.c.user_id == sa.bindparam("user_id"),
        event_txns.c.device_id == sa.bindparam("device_id"),
        event_txns.c.scope == sa.bindparam("scope"),
        event_txns.c.txn_id == sa.bindparam("txn_id"),
    )
)
_WINDOW_FROM = _e.outerjoin(event_relations, event_relations.c.event_id == _e.c.event_id)
_IN_WINDOW = (
    _e.c.stream_ordering > sa.bindparam("after"),
    _e.c.stream_ordering <= sa.bindparam("upto"),
)
_WINDOW = prepared(
    sa.select(_e.c.room_id, _e.c.type, _e.c.state_key, _e.c.sender, event_relations.c.relates_to_id)
    .select_from(_WINDOW_FROM)
    .where(*_IN_WINDOW)
)
# A short window's: the events themselves too.
_WINDOW_EVENTS = prepared(
    sa.select(*EVENT_COLUMNS, event_relations.c.relates_to_id)
    .select_from(_WINDOW_FROM)
    .where(*_IN_WINDOW)
    .order_by(_e.c.stream_ordering)
)
# Memberships that changed at a window event's position without being its own: state
# resolution dropped or replaced them (a merge of forks), so their users are in the window's
# members as well.
_rm = room_memberships
_RESOLVED_MEMBERS = prepared(
    sa.select(_rm.c.user_id)
    .select_from(
        _e.join(
            _rm,
            sa.and_(_rm.c.room_id == _e.c.room_id, _rm.c.stream_ordering == _e.c.stream_ordering),
        )
    )
    .where(*_IN_WINDOW, _rm.c.event_id != _e.c.event_id)
)
_ROOMS_CHANGED = prepared(
    sa.select(_e.c.room_id)
    .distinct()
    .where(
        _e.c.stream_ordering > sa.bindparam("after"),
        _e.c.stream_ordering <= sa.bindparam("upto"),
        _e.c.room_id.in_(sa.bindparam("rooms", expanding=True)),
    )
)


# Rooms read by one statement of ``get_latest_of_rooms`` (a UNION ALL of one arm per room;
# SQLite allows 500 arms).
ROOMS_PER_STATEMENT = 100


_CHILDREN_OF = prepared(
    sa.select(event_relations.c.relates_to_id, event_relations.c.room_id)
    .distinct()
    .where(event_relations.c.relates_to_id.in_(sa.bindparam("ids", expanding=True)))
)


# Statements of ``get_latest_of_rooms`` by their number of arms, built at first use and kept
# (building one costs more than running it): a few sizes, the unused arms match nothing.
_LATEST_OF_ROOMS: dict[int, sa.Select[Any] | sa.CompoundSelect[Any]] = {}


def _latest_of_rooms(rooms: int) -> tuple[sa.Select[Any] | sa.CompoundSelect[Any], int]:
    """The statement for ``rooms`` rooms, and its number of arms (at least ``rooms``)."""
    size = next(n for n in (1, 4, 16, 32, 64, ROOMS_PER_STATEMENT) if n >= rooms)
    found = _LATEST_OF_ROOMS.get(size)
    if found is None:
        arms = [
            sa.select(*EVENT_COLUMNS)
            .where(
                _e.c.room_id == sa.bindparam(f"room_{i}"),
                _e.c.stream_ordering > 0,  # events never served are numbered below 0
                _e.c.stream_ordering <= sa.bindparam("upto"),
            )
            .order_by(_e.c.stream_ordering.desc())
            .limit(sa.bindparam("limit"))
            .subquery()
            .select()
            for i in range(size)
        ]
        found = prepared(arms[0] if size == 1 else sa.union_all(*arms))
        _LATEST_OF_ROOMS[size] = found
    return found, size


def _room_events_query(after: bool, upto: bool, descending: bool) -> sa.Select[Any]:
    query = sa.select(*EVENT_COLUMNS).where(_e.c.room_id == sa.bindparam("room_id"))
    if after:
        query = query.where(_e.c.stream_ordering > sa.bindparam("after"))
    else:  # events never served are numbered below 0
        query = query.where(_e.c.stream_ordering > 0)
    if upto:
        query = query.where(_e.c.stream_ordering <= sa.bindparam("upto"))
    order = _e.c.stream_ordering.desc() if descending else _e.c.stream_ordering.asc()
    return query.order_by(order).limit(sa.bindparam("limit"))


_ROOM_EVENTS = {
    (a, u, d): prepared(_room_events_query(a, u, d))
    for a in (False, True)
    for u in (False, True)
    for d in (False, True)
}

# A room's timeline in topological order: (depth, stream_ordering), on the index
# ix_events_room_id_depth_stream_ordering. Every bound is optional: ``below`` and ``above``
# are topological ((depth, stream) <= below, > above), ``after`` and ``upto`` are positions
# of the events stream (after < stream <= upto).
_TOPOLOGICAL = (_e.c.depth, _e.c.stream_ordering)
TimelineShape = tuple[bool, bool, bool, bool, bool]  # below, above, after, upto, descending
_TIMELINE: dict[TimelineShape, sa.Select[Any]] = {}


def _timeline_query(shape: TimelineShape) -> sa.Select[Any]:
    below, above, after, upto, descending = shape
    # The stream bounds are left off the index (``+ 0``: not a range SQLite would scan the
    # (room_id, stream_ordering) index for) so that the topological index gives the order,
    # and a page stops after ``limit`` rows. Except forwards from a stream position alone
    # (no topological bound): the events after it are found on the stream index, usually
    # few, then sorted.
    stream: sa.ColumnElement[Any] = _e.c.stream_ordering
    if descending or above or not after:
        stream = stream + 0
    query = sa.select(*EVENT_COLUMNS).where(_e.c.room_id == sa.bindparam("room_id"))
    if after:  # backfilled events are below every position of the events stream
        query = query.where(stream > sa.bindparam("after"))
    else:  # served only: on the events stream or backfilled
        query = query.where(sa.or_(stream > 0, stream <= BACKFILL_BASE))
    if upto:
        query = query.where(stream <= sa.bindparam("upto"))
    if below:
        query = query.where(
            sa.tuple_(*_TOPOLOGICAL)
            <= sa.tuple_(sa.bindparam("below_depth"), sa.bindparam("below_stream"))
        )
    if above:
        query = query.where(
            sa.tuple_(*_TOPOLOGICAL)
            > sa.tuple_(sa.bindparam("above_depth"), sa.bindparam("above_stream"))
        )
    order = [c.desc() if descending else c.asc() for c in _TOPOLOGICAL]
    return query.order_by(*order).limit(sa.bindparam("limit"))


def timeline_query(shape: TimelineShape) -> sa.Select[Any]:
    """The statement of one shape of timeline read, built once."""
    query = _TIMELINE.get(shape)
    if query is None:
        query = _TIMELINE[shape] = prepared(_timeline_query(shape))
    return query


class EventReads:
    """The event store's reads of events (a part of ``EventStore``)."""

    _db: Database
    _windows: RangeReads[StreamWindow]

    # --- reading events --------------------------------------------------------------------

    async def get_event(self, event_id: str) -> StoredEvent | None:
        found = await self.get_events([event_id])
        return found.get(event_id)

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return {}
        async with self._db.read() as conn:
            rows = (await conn.execute(_EVENTS_BY_ID, {"ids": ids})).all()
        return {r.event_id: to_event(r) for r in rows}

    async def get_txn_event_id(
        self, user_id: str, device_id: str, scope: str, txn_id: str
    ) -> str | None:
        async with self._db.read() as conn:
            value = (
                await conn.execute(
                    _TXN,
                    {"user_id": user_id, "device_id": device_id, "scope": scope, "txn_id": txn_id},
                )
            ).scalar()
        return value

    async def get_room_events(
        self,
        room_id: str,
        *,
        after: int | None = None,
        upto: int | None = None,
        limit: int,
        descending: bool,
    ) -> list[StoredEvent]:
        """Events of one room with ``after < stream_ordering <= upto``, newest or oldest first."""
        query = _ROOM_EVENTS[(after is not None, upto is not None, descending)]
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    query, {"room_id": room_id, "after": after, "upto": upto, "limit": limit}
                )
            ).all()
        return [to_event(r) for r in rows]

    async def get_latest_of_rooms(
        self, room_ids: Sequence[str], *, upto: int, limit: int
    ) -> dict[str, list[StoredEvent]]:
        """The newest ``limit`` served events at or below ``upto`` of each room, newest
        first, in one statement per ``ROOMS_PER_STATEMENT`` rooms (a sliding sync window):
        as ``get_room_events(room_id, upto=upto, limit=limit, descending=True)`` for each."""
        found: dict[str, list[StoredEvent]] = {room_id: [] for room_id in room_ids}
        ids = list(found)
        for start in range(0, len(ids), ROOMS_PER_STATEMENT):
            chunk = ids[start : start + ROOMS_PER_STATEMENT]
            query, arms = _latest_of_rooms(len(chunk))
            params: dict[str, Any] = {"upto": upto, "limit": limit}
            # The arms past the chunk's rooms ask for a room ID no room has.
            params.update({f"room_{i}": "" for i in range(arms)})
            params.update({f"room_{i}": room_id for i, room_id in enumerate(chunk)})
            async with self._db.read() as conn:
                rows = (await conn.execute(query, params)).all()
            for r in rows:
                found[r.room_id].append(to_event(r))
        for room_events in found.values():
            room_events.sort(key=lambda e: e.stream_ordering, reverse=True)
        return found

    async def with_children(self, events: Iterable[StoredEvent]) -> set[str]:
        """Which of the events have a child (a relation to them from their own room), in
        one statement: the others have nothing to bundle."""
        rooms = {e.event_id: e.room_id for e in events}
        if not rooms:
            return set()
        async with self._db.read() as conn:
            rows = (await conn.execute(_CHILDREN_OF, {"ids": list(rooms)})).all()
        return {r.relates_to_id for r in rows if rooms.get(r.relates_to_id) == r.room_id}

    async def get_timeline(
        self,
        room_id: str,
        *,
        below: tuple[int, int] | None = None,
        above: tuple[int, int] | None = None,
        after: int | None = None,
        upto: int | None = None,
        limit: int,
        descending: bool,
    ) -> list[StoredEvent]:
        """Served events of one room in topological order, (depth, stream_ordering), last
        first when ``descending``: those with ``above < (depth, stream) <= below`` and
        ``after < stream_ordering <= upto``, each bound where given."""
        shape = (below is not None, above is not None, after is not None, upto is not None)
        params: dict[str, Any] = {"room_id": room_id, "limit": limit}
        if below is not None:
            params["below_depth"], params["below_stream"] = below
        if above is not None:
            params["above_depth"], params["above_stream"] = above
        if after is not None:
            params["after"] = after
        if upto is not None:
            params["upto"] = upto
        async with self._db.read() as conn:
            rows = (await conn.execute(timeline_query((*shape, descending)), params)).all()
        return [to_event(r) for r in rows]

    async def get_window(self, after: int, upto: int) -> StreamWindow | None:
        """The events stream in ``(after, upto]``; None when more than ``WINDOW_MAX_EVENTS``
        positions lie there. ``upto`` must be committed (a sync's current position): the
        answer is kept for everyone who asks for the same range."""
        return await self._windows.get(after, upto, self._read_window)

    async def _read_window(self, after: int, upto: int) -> StreamWindow:
        short = upto - after <= SHARED_TIMELINE_MAX_EVENTS
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    _WINDOW_EVENTS if short else _WINDOW, {"after": after, "upto": upto}
                )
            ).all()
            resolved = (
                (await conn.execute(_RESOLVED_MEMBERS, {"after": after, "upto": upto})).all()
                if rows
                else []
            )
        senders: dict[str, set[str]] = {}
        for r in rows:
            senders.setdefault(r.sender, set()).add(r.room_id)
        return StreamWindow(
            frozenset(r.room_id for r in rows),
            frozenset(
                r.state_key for r in rows if r.type == "m.room.member" and r.state_key is not None
            )
            | {r.user_id for r in resolved},
            frozenset(r.relates_to_id for r in rows if r.relates_to_id is not None),
            {sender: frozenset(rooms) for sender, rooms in senders.items()},
            tuple(rows) if short else None,
        )

    async def get_recent_events(
        self, room_id: str, after: int, upto: int, limit: int
    ) -> list[StoredEvent]:
        """A sync's timeline: the room's newest ``limit`` events in ``(after, upto]``, newest
        first. ``upto`` must be committed: from a short range they come from its window (the
        sync has it already), read once for every sync woken by the same events."""
        if upto - after <= SHARED_TIMELINE_MAX_EVENTS and limit > 0:
            window = await self.get_window(after, upto)
            events = window.events_of(room_id) if window is not None else None
            if events is not None:
                return list(reversed(events[-limit:]))
        return await self.get_room_events(
            room_id, after=after, upto=upto, limit=limit, descending=True
        )

    async def get_rooms_changed(self, room_ids: Sequence[str], after: int, upto: int) -> set[str]:
        """Which of ``room_ids`` have events in ``(after, upto]`` (``upto`` committed)."""
        if not room_ids or upto <= after:
            return set()
        window = await self.get_window(after, upto)
        if window is not None:
            return set(window.rooms.intersection(room_ids))
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    _ROOMS_CHANGED, {"after": after, "upto": upto, "rooms": list(room_ids)}
                )
            ).all()
        return {r.room_id for r in rows}

    async def get_max_stream_ordering_before(self, room_id: str, upto: int) -> int | None:
        async with self._db.read() as conn:
            value = (
                await conn.execute(
                    sa.select(sa.func.max(events.c.stream_ordering)).where(
                        events.c.room_id == room_id, events.c.stream_ordering <= upto
                    )
                )
            ).scalar()
        return int(value) if value is not None else None
