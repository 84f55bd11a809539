"""The chain cover index of the auth graph (the algorithm of Synapse's
docs/auth_chain_difference_algorithm.md, our own code).

Every state event has a place on a *chain*: a line of events where each one's auth events
include the one before (in practice the history of one type and state key: a user's
memberships, the power levels). An event extends the chain of its auth event of the same
type and state key when that event is still the chain's last; otherwise it starts a chain
of its own, named by its event ID (no counter to allocate). *Links* say where an event
reaches on other chains: (origin chain, origin sequence number) -> (target chain, target
sequence number) means every event of the origin chain from that number on has in its auth
chain the target chain's events up to that number. A link that another auth event of the
same event already implies is not stored, so links stay few: one per change of the power
levels, join rules or create a chain's events cite, not one per auth edge.

An event's auth chain is then: its own chain below it, and for each chain reached through
links (followed transitively), that chain up to the highest number reached. The auth
difference of state sets is, chain by chain, the numbers between the lowest and the highest
reach of the sets: a range query, instead of walking every auth edge of the room.

Only state events are indexed: auth events are state events, and state sets hold state
events, so a message (the hot path: ``message.py``'s one statement) writes nothing here.

Events whose auth events are not all indexed yet (an outlier that came before its auth
events, an auth event we never received) wait in ``event_auth_chain_to_calculate``: each
incoming state event that gets indexed looks for the waiting events of its room that cite
it and whose auth events are now all indexed, and indexes them (and so on from those), in
the same transaction: one statement per event placed, a look-up by room when none waits.
Reads whose events are not all indexed use the recursive query over ``event_auth``
(``graph.py``), which is always right: an index row is only written once the event's whole
auth chain is indexed, so an indexed set's answer never depends on a waiting event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from homeserver.storage.database import Connection, prepared
from homeserver.storage.schema import (
    event_auth,
    event_auth_chain_links,
    event_auth_chain_to_calculate,
    event_auth_chains,
    events,
)

_c = event_auth_chains
_l = event_auth_chain_links
_w = event_auth_chain_to_calculate


def _place_statement() -> sa.Insert:
    """The event's row, when all its ``auths`` are indexed: on the chain of its auth event of
    the same type and state key if that is the chain's last, else a chain of its own."""
    auths: sa.BindParameter[list[str]] = sa.bindparam("auths", expanding=True)
    event_id = sa.bindparam("event_id", type_=sa.Text)
    a = _c.alias("a")
    later = _c.alias("later")
    extended = (
        sa.select(a.c.chain_id, a.c.sequence_number)
        .join(events, events.c.event_id == a.c.event_id)
        .where(
            a.c.event_id.in_(auths),
            events.c.type == sa.bindparam("type", type_=sa.Text),
            events.c.state_key == sa.bindparam("state_key", type_=sa.Text),
            ~sa.exists().where(
                later.c.chain_id == a.c.chain_id, later.c.sequence_number > a.c.sequence_number
            ),
        )
        .limit(1)
        .subquery("extended")
    )
    indexed = sa.select(sa.func.count()).select_from(a).where(a.c.event_id.in_(auths))
    own = _c.alias("own")
    return sa.insert(_c).from_select(
        ["event_id", "chain_id", "sequence_number"],
        sa.select(
            event_id,
            sa.func.coalesce(sa.select(extended.c.chain_id).scalar_subquery(), event_id),
            sa.func.coalesce(
                sa.select(extended.c.sequence_number + 1).scalar_subquery(), sa.literal(1)
            ),
        ).where(
            indexed.scalar_subquery() == sa.bindparam("count", type_=sa.Integer),
            ~sa.exists().where(own.c.event_id == event_id),  # an outlier stored again
        ),
    )


def _link_statement() -> sa.Insert:
    """The event's links to the chains of its auth events, less those another of its auth
    events already reaches (a later event of the same chain, or a link of its own)."""
    auths: sa.BindParameter[list[str]] = sa.bindparam("auths", expanding=True)
    n = _c.alias("n")
    a = _c.alias("a")
    b = _c.alias("b")
    known = _l.alias("known")
    implied = sa.exists().where(
        b.c.event_id.in_(auths),
        b.c.event_id != a.c.event_id,
        sa.or_(
            sa.and_(b.c.chain_id == a.c.chain_id, b.c.sequence_number > a.c.sequence_number),
            sa.exists()
            .where(
                known.c.origin_chain_id == b.c.chain_id,
                known.c.target_chain_id == a.c.chain_id,
                known.c.origin_sequence_number <= b.c.sequence_number,
                known.c.target_sequence_number >= a.c.sequence_number,
            )
            .correlate_except(known),
        ),
    )
    return sa.insert(_l).from_select(
        ["origin_chain_id", "target_chain_id", "origin_sequence_number", "target_sequence_number"],
        sa.select(n.c.chain_id, a.c.chain_id, n.c.sequence_number, a.c.sequence_number)
        .select_from(n.join(a, a.c.event_id.in_(auths)))
        .where(
            n.c.event_id == sa.bindparam("event_id", type_=sa.Text),
            a.c.chain_id != n.c.chain_id,
            ~implied,
        ),
    )


_PLACE = prepared(_place_statement())
_LINK = prepared(_link_statement())
# Unless it is indexed or waiting already: an outlier stored again (as a timeline event).
_placed = _c.alias("placed")
_waiting = _w.alias("waiting")
_WAIT = prepared(
    sa.insert(_w).from_select(
        ["event_id", "room_id", "type", "state_key"],
        sa.select(
            sa.bindparam("event_id", type_=sa.Text),
            sa.bindparam("room_id", type_=sa.Text),
            sa.bindparam("type", type_=sa.Text),
            sa.bindparam("state_key", type_=sa.Text),
        ).where(
            ~sa.exists().where(_placed.c.event_id == sa.bindparam("event_id")),
            ~sa.exists().where(_waiting.c.event_id == sa.bindparam("event_id")),
        ),
    )
)
# The room's waiting events that cite the event just placed and none of whose auth events
# is unindexed.
_unindexed = _c.alias("unindexed")
_cites = event_auth.alias("cites")
_READY = prepared(
    sa.select(_w.c.event_id, _w.c.type, _w.c.state_key).where(
        _w.c.room_id == sa.bindparam("room_id"),
        sa.exists().where(
            _cites.c.event_id == _w.c.event_id, _cites.c.auth_id == sa.bindparam("placed")
        ),
        ~sa.exists()
        .select_from(
            event_auth.outerjoin(_unindexed, _unindexed.c.event_id == event_auth.c.auth_id)
        )
        .where(event_auth.c.event_id == _w.c.event_id, _unindexed.c.event_id.is_(None)),
    )
)
_AUTHS = prepared(
    sa.select(event_auth.c.auth_id).where(event_auth.c.event_id == sa.bindparam("event_id"))
)
_DONE = prepared(sa.delete(_w).where(_w.c.event_id == sa.bindparam("event_id")))


async def _place(
    conn: Connection, event_id: str, event_type: str, state_key: str, auths: Sequence[str]
) -> bool:
    """Index the event if its auth events all are; whether it was placed now."""
    params = {
        "event_id": event_id,
        "type": event_type,
        "state_key": state_key,
        "auths": list(auths),
        "count": len(auths),
    }
    placed = (await conn.execute(_PLACE, params)).rowcount == 1
    if placed and auths:
        await conn.execute(_LINK, {"event_id": event_id, "auths": list(auths)})
    return placed


async def index_event(
    conn: Connection,
    room_id: str,
    event_id: str,
    event_type: str,
    state_key: str,
    auths: Sequence[str],
    *,
    waiting: bool,
) -> None:
    """Inside the persisting transaction, after the event's row: its place in the index (two
    statements), or a row in the waiting table. With ``waiting`` (events that arrived over
    federation, which may be the auth events others wait for; a local event is new, so none
    waits for it), the room's waiting events that can be placed now are placed."""
    if not await _place(conn, event_id, event_type, state_key, auths):
        await conn.execute(
            _WAIT,
            {"event_id": event_id, "room_id": room_id, "type": event_type, "state_key": state_key},
        )
        return
    if not waiting:
        return
    placed = [event_id]  # each event placed may complete the auth events of waiting ones
    while placed:
        ready = (await conn.execute(_READY, {"room_id": room_id, "placed": placed.pop()})).all()
        for row in ready:
            ids = [r.auth_id for r in (await conn.execute(_AUTHS, {"event_id": row.event_id}))]
            if await _place(conn, row.event_id, row.type, row.state_key, ids):
                placed.append(row.event_id)
            await conn.execute(_DONE, {"event_id": row.event_id})


@dataclass(slots=True)
class ChainBuilder:
    """The same index computed in memory, for many events at once (a migration indexing the
    rooms stored before it, the benchmark's synthetic room): ``add`` the state events, in
    any order, then ``rows``. Gives the places and links the write path would have given
    for the same events persisted auth events first."""

    _events: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    def add(self, event_id: str, event_type: str, state_key: str, auths: Iterable[str]) -> None:
        key = _key(event_type, state_key)
        self._events[event_id] = (key, list(dict.fromkeys(auths)))

    def rows(
        self,
    ) -> tuple[list[dict[str, object]], list[dict[str, object]], list[str]]:
        """(index rows, link rows, event IDs left waiting: their auth chains are incomplete)."""
        places: dict[str, tuple[str, int]] = {}
        last: dict[str, int] = {}  # chain -> its last sequence number
        links: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
        link_rows: list[dict[str, object]] = []
        # Kahn's order: an event once all its auth events are placed.
        missing = {e: len(auths) for e, (_, auths) in self._events.items()}
        dependents: dict[str, list[str]] = defaultdict(list)
        for event_id, (_, auths) in self._events.items():
            for a in auths:
                dependents[a].append(event_id)
        ready = sorted((e for e, n in missing.items() if n == 0), reverse=True)
        while ready:
            event_id = ready.pop()
            key, auths = self._events[event_id]
            place = self._extend(key, auths, places, last) or (event_id, 1)
            places[event_id] = place
            last[place[0]] = place[1]
            for a in auths:
                target = places[a]
                if target[0] == place[0] or _implied(a, auths, places, links):
                    continue
                links[place[0]].append((place[1], target[0], target[1]))
                link_rows.append(
                    {
                        "origin_chain_id": place[0],
                        "origin_sequence_number": place[1],
                        "target_chain_id": target[0],
                        "target_sequence_number": target[1],
                    }
                )
            for child in dependents.get(event_id, ()):
                missing[child] -= 1
                if missing[child] == 0:
                    ready.append(child)
        pending = [e for e in self._events if e not in places]
        index_rows: list[dict[str, object]] = [
            {"event_id": e, "chain_id": c, "sequence_number": s} for e, (c, s) in places.items()
        ]
        return index_rows, link_rows, sorted(pending)

    def _extend(
        self,
        key: str,
        auths: list[str],
        places: dict[str, tuple[str, int]],
        last: dict[str, int],
    ) -> tuple[str, int] | None:
        for a in auths:
            chain, seq = places[a]
            if self._events[a][0] == key and last[chain] == seq:
                return chain, seq + 1
        return None


def _key(event_type: str, state_key: str) -> str:
    return f"{len(event_type)}:{event_type}{state_key}"  # the length: no two pairs alike


def _implied(
    target: str,
    auths: list[str],
    places: Mapping[str, tuple[str, int]],
    links: Mapping[str, list[tuple[int, str, int]]],
) -> bool:
    chain, seq = places[target]
    for b in auths:
        if b == target:
            continue
        b_chain, b_seq = places[b]
        if b_chain == chain and b_seq > seq:
            return True
        for origin, t_chain, t_seq in links.get(b_chain, ()):
            if origin <= b_seq and t_chain == chain and t_seq >= seq:
                return True
    return False
