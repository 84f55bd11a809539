"""Events, room state and memberships: what commits together when an event is persisted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cachetools import LRUCache

from homeserver.core import jsonutil
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database
from homeserver.storage.event_statements import (
    _EVENT_COLUMNS,
    _EVENTS_BY_ID,
    _INSERT_EVENT,
    _LOCK_ROOM,
    _MESSAGE,
    _MOVE_ROOM,
    _PREV_GROUP,
    _ROOM_EVENTS,
    _ROOMS_CHANGED,
    _STATE_OF_GROUP,
    _TXN,
    _TXN_KEY,
    _WINDOW,
    _WINDOW_EVENTS,
)
from homeserver.storage.push import PushAction, record_push_actions
from homeserver.storage.relations import parse_relation, record_relation
from homeserver.storage.schema import (
    current_state,
    event_txns,
    events,
    room_memberships,
    state_group_entries,
    state_groups,
)
from homeserver.storage.shared_reads import RangeReads

StateKey = tuple[str, str]
StateMap = dict[StateKey, str]  # (type, state_key) -> event_id

# A state group stores only its delta from the previous one; every this many deltas a full
# snapshot is written, so reading any state walks at most this many groups.
MAX_STATE_CHAIN = 50


@dataclass(frozen=True, slots=True)
class StoredEvent:
    stream_ordering: int
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    origin_server_ts: int
    depth: int
    pdu: JsonDict
    unsigned: JsonDict
    state_group: int
    redacted_by: str | None
    device_id: str | None
    txn_id: str | None

    @property
    def content(self) -> JsonDict:
        content: JsonDict = self.pdu.get("content", {})
        return content

    @property
    def is_state(self) -> bool:
        return self.state_key is not None


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
                _to_event(r) for r in self.rows if r.room_id == room_id
            )
        return found

    @property
    def weight(self) -> int:
        return 1 + len(self.rows or ())


_EMPTY_WINDOW = StreamWindow(frozenset(), frozenset(), frozenset(), {}, ())


class DuplicateTxn(Exception):
    """The event's transaction ID was taken by another event: nothing was persisted."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event ready to persist, with what its persistence must also record."""

    pdu: JsonDict
    event_id: str
    room_id: str
    unsigned: JsonDict
    device_id: str | None = None
    txn_id: str | None = None
    txn_scope: str | None = None
    # The members it notifies (push rules evaluated before persisting; issue 6).
    push_actions: tuple[PushAction, ...] = ()


def _to_event(r: Any) -> StoredEvent:
    return StoredEvent(
        int(r.stream_ordering),
        r.event_id,
        r.room_id,
        r.type,
        r.state_key,
        r.sender,
        int(r.origin_server_ts),
        int(r.depth),
        jsonutil.loads(r.json),
        jsonutil.loads(r.unsigned_json) if r.unsigned_json else {},
        int(r.state_group),
        r.redacted_by,
        r.device_id,
        r.txn_id,
    )


class EventStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # State groups never change once written.
        self._state_cache: LRUCache[int, StateMap] = LRUCache(maxsize=2000)
        # Nor does what lies between two committed positions.
        self._windows: RangeReads[StreamWindow] = RangeReads(
            WINDOWS_KEPT, WINDOW_MAX_EVENTS, _EMPTY_WINDOW, lambda window: window.weight
        )
        # Built here, so that start-up compiles it (Database.prepare_statements).
        self._claim_txn = db.insert_ignore_statement(
            event_txns,
            ("user_id", "device_id", "scope", "txn_id"),
            columns=("user_id", "device_id", "scope", "txn_id", "event_id", "created_ts"),
        )

    def pinned_reads(self) -> AbstractAsyncContextManager[None]:
        """Reads of every store inside share one connection (see Database.pinned_reads)."""
        return self._db.pinned_reads()

    # --- writing ---------------------------------------------------------------------------

    async def persist_event(self, new: NewEvent, expected_latest: str | None) -> int | None:
        """Persist one event as the room's new forward extremity, in one transaction.

        Returns its stream position, or None when the room's latest event is no longer
        ``expected_latest`` (another writer got there first: rebuild and try again). Raises
        ``DuplicateTxn`` when a retry of the same transaction persisted its event first.
        """
        pdu = new.pdu
        state_key: str | None = pdu.get("state_key")
        event_json = jsonutil.dumps_str(pdu)
        unsigned_json = jsonutil.dumps_str(new.unsigned) if new.unsigned else None
        if (
            not self._db.is_sqlite
            and state_key is None
            and expected_latest is not None
            and pdu["type"] != "m.room.redaction"
        ):
            return await self._persist_message(new, expected_latest, event_json, unsigned_json)
        async with self._db.write() as conn:
            room = (await conn.execute(_LOCK_ROOM, {"room_id": new.room_id})).first()
            if room is None or room.latest_event_id != expected_latest:
                return None
            # Everything that needs no stream position comes first: on PostgreSQL the
            # position's row stays locked from next_position to COMMIT, for every room.
            if new.txn_id is not None and new.device_id is not None:
                taken = await conn.execute(
                    self._claim_txn,
                    {
                        "user_id": pdu["sender"],
                        "device_id": new.device_id,
                        "scope": new.txn_scope or "",
                        "txn_id": new.txn_id,
                        "event_id": new.event_id,
                        "created_ts": pdu["origin_server_ts"],
                    },
                )
                if taken.rowcount == 0:
                    raise DuplicateTxn(new.txn_id)  # rolls the whole transaction back
            group = before = room.current_state_group
            if state_key is not None:
                group = await self._add_state_group(
                    conn, new.room_id, before, {(pdu["type"], state_key): new.event_id}
                )
            await conn.execute(
                _MOVE_ROOM,
                {"id": new.room_id, "latest": new.event_id, "depth": pdu["depth"], "group": group},
            )
            position = await self._db.next_position(conn, Stream.EVENTS)
            await conn.execute(
                _INSERT_EVENT,
                {
                    "stream_ordering": position,
                    "event_id": new.event_id,
                    "room_id": new.room_id,
                    "type": pdu["type"],
                    "state_key": state_key,
                    "sender": pdu["sender"],
                    "depth": pdu["depth"],
                    "origin_server_ts": pdu["origin_server_ts"],
                    "json": event_json,
                    "unsigned_json": unsigned_json,
                    "state_group": group,
                    "device_id": new.device_id,
                    "txn_id": new.txn_id,
                },
            )
            if state_key is not None:
                await self._update_current_state(conn, new, state_key, position)
            redacts = _redacts(pdu)
            if pdu["type"] == "m.room.redaction" and redacts is not None:
                await conn.execute(
                    sa.update(events)
                    .where(
                        events.c.event_id == redacts,
                        events.c.room_id == new.room_id,
                        events.c.redacted_by.is_(None),
                    )
                    .values(redacted_by=new.event_id)
                )
            await record_relation(conn, pdu, new.event_id, new.room_id, position, redacts)
            await record_push_actions(
                conn, new.push_actions, new.room_id, new.event_id, position, pdu["origin_server_ts"]
            )
        if state_key is not None:
            # Committed: the new group's state is the previous one's plus this event, so the
            # room's next send does not load it (an uncommitted group's ID may be reused).
            previous = {} if before is None else self._state_cache.get(before)
            if previous is not None:
                self._state_cache[group] = {**previous, (pdu["type"], state_key): new.event_id}
        return position

    async def _persist_message(
        self, new: NewEvent, expected_latest: str, event_json: str, unsigned_json: str | None
    ) -> int | None:
        """``persist_event`` of a message on PostgreSQL: one statement (``_MESSAGE``)."""
        pdu = new.pdu
        claim = new.txn_id is not None and new.device_id is not None
        relation = parse_relation(pdu.get("content"), event_type=pdu["type"])
        actions = new.push_actions
        try:
            result = await self._db.write_alone(
                _MESSAGE[(claim, relation is not None)],
                {
                    "room_id": new.room_id,
                    "expected": expected_latest,
                    "event_id": new.event_id,
                    "type": pdu["type"],
                    "sender": pdu["sender"],
                    "depth": pdu["depth"],
                    "ts": pdu["origin_server_ts"],
                    "json": event_json,
                    "unsigned_json": unsigned_json,
                    "device_id": new.device_id,
                    "txn_id": new.txn_id,
                    "scope": new.txn_scope or "",
                    "users": [a.user_id for a in actions],
                    "threads": [a.thread_id for a in actions],
                    "actions": [a.actions_json for a in actions],
                    "highlights": [a.highlight for a in actions],
                    "relates_to_id": relation.parent_id if relation else None,
                    "rel_type": relation.rel_type if relation else None,
                    "aggregation_key": relation.key if relation else None,
                },
            )
        except sa.exc.IntegrityError as error:
            if claim and _TXN_KEY in str(error.orig):
                raise DuplicateTxn(new.txn_id) from error
            raise
        position = result.scalar()
        return None if position is None else int(position)

    async def _add_state_group(
        self, conn: Connection, room_id: str, prev: int | None, delta: StateMap
    ) -> int:
        chain = 0
        if prev is not None:
            chain = int(
                (
                    await conn.execute(
                        sa.select(state_groups.c.chain_length).where(state_groups.c.id == prev)
                    )
                ).scalar_one()
            )
        snapshot = prev is None or chain + 1 >= MAX_STATE_CHAIN
        entries = delta
        if snapshot and prev is not None:
            entries = {**await self._state_for_group(conn, prev), **delta}
        group = int(
            (
                await conn.execute(
                    sa.insert(state_groups)
                    .values(
                        room_id=room_id,
                        prev_group=prev,
                        is_snapshot=snapshot,
                        chain_length=0 if snapshot else chain + 1,
                    )
                    .returning(state_groups.c.id)
                )
            ).scalar_one()
        )
        await conn.execute(
            sa.insert(state_group_entries),
            [
                {"state_group": group, "type": t, "state_key": k, "event_id": e}
                for (t, k), e in entries.items()
            ],
        )
        return group

    async def _update_current_state(
        self, conn: Connection, new: NewEvent, state_key: str, position: int
    ) -> None:
        pdu = new.pdu
        await conn.execute(
            self._db.upsert(
                current_state,
                {
                    "room_id": new.room_id,
                    "type": pdu["type"],
                    "state_key": state_key,
                    "event_id": new.event_id,
                },
                keys=("room_id", "type", "state_key"),
            )
        )
        if pdu["type"] != "m.room.member":
            return
        content = pdu.get("content", {})
        displayname = content.get("displayname")
        avatar_url = content.get("avatar_url")
        await conn.execute(
            self._db.upsert(
                room_memberships,
                {
                    "room_id": new.room_id,
                    "user_id": state_key,
                    "membership": content.get("membership"),
                    "event_id": new.event_id,
                    "sender": pdu["sender"],
                    "stream_ordering": position,
                    "forgotten": False,
                    "displayname": displayname if isinstance(displayname, str) else None,
                    "avatar_url": avatar_url if isinstance(avatar_url, str) else None,
                },
                keys=("room_id", "user_id"),
            )
        )

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
        return {r.event_id: _to_event(r) for r in rows}

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
        return [_to_event(r) for r in rows]

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
        senders: dict[str, set[str]] = {}
        for r in rows:
            senders.setdefault(r.sender, set()).add(r.room_id)
        return StreamWindow(
            frozenset(r.room_id for r in rows),
            frozenset(
                r.state_key for r in rows if r.type == "m.room.member" and r.state_key is not None
            ),
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

    # --- reading state ---------------------------------------------------------------------

    async def get_state_ids(self, state_group: int) -> StateMap:
        cached = self._state_cache.get(state_group)
        if cached is None:
            async with self._db.read() as conn:
                cached = await self._state_for_group(conn, state_group)
            self._state_cache[state_group] = cached
        return dict(cached)

    async def get_state_before(self, event: StoredEvent) -> StateMap:
        """The state the event was sent in (for a state event, without itself)."""
        if event.state_key is None:
            return await self.get_state_ids(event.state_group)
        async with self._db.read() as conn:
            prev = (await conn.execute(_PREV_GROUP, {"id": event.state_group})).scalar()
        return await self.get_state_ids(int(prev)) if prev is not None else {}

    async def _state_for_group(self, conn: Connection, group: int) -> StateMap:
        rows = (await conn.execute(_STATE_OF_GROUP, {"group": group})).all()
        state: StateMap = {}
        for r in rows:
            state[(r.type, r.state_key)] = r.event_id
        return state

    async def get_current_state_ids(
        self, room_id: str, types: Iterable[str] | None = None
    ) -> StateMap:
        query = sa.select(
            current_state.c.type, current_state.c.state_key, current_state.c.event_id
        ).where(current_state.c.room_id == room_id)
        if types is not None:
            query = query.where(current_state.c.type.in_(list(types)))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {(r.type, r.state_key): r.event_id for r in rows}

    async def get_current_state_event(
        self, room_id: str, event_type: str, state_key: str
    ) -> StoredEvent | None:
        query = (
            sa.select(*_EVENT_COLUMNS)
            .join(current_state, current_state.c.event_id == events.c.event_id)
            .where(
                current_state.c.room_id == room_id,
                current_state.c.type == event_type,
                current_state.c.state_key == state_key,
            )
        )
        async with self._db.read() as conn:
            r = (await conn.execute(query)).first()
        return _to_event(r) if r is not None else None

    async def get_current_state_events(self, room_id: str) -> list[StoredEvent]:
        query = (
            sa.select(*_EVENT_COLUMNS)
            .join(current_state, current_state.c.event_id == events.c.event_id)
            .where(current_state.c.room_id == room_id)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_to_event(r) for r in rows]


def _redacts(pdu: JsonDict) -> str | None:
    value = pdu.get("content", {}).get("redacts", pdu.get("redacts"))
    return value if isinstance(value, str) else None
