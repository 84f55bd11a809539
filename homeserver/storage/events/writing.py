"""Persisting events: what commits together when an event is persisted."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import sqlalchemy as sa
from cachetools import LRUCache

from homeserver.core import jsonutil
from homeserver.core.streams import Stream
from homeserver.storage.database import Database, prepared
from homeserver.storage.events.graph import GraphReads, record_graph, referenced_ids
from homeserver.storage.events.incoming import IncomingWrites
from homeserver.storage.events.message import MESSAGE
from homeserver.storage.events.model import DuplicateTxn, NewEvent, StateMap, redacts_of
from homeserver.storage.events.reading import (
    EMPTY_WINDOW,
    WINDOW_MAX_EVENTS,
    WINDOWS_KEPT,
    EventReads,
    StreamWindow,
)
from homeserver.storage.events.state import (
    STATE_CACHE_ENTRIES,
    STATE_DELTA_ENTRIES,
    delta_cache_weight,
    state_cache_weight,
)
from homeserver.storage.push import record_push_actions
from homeserver.storage.relations import parse_relation, record_relation
from homeserver.storage.schema import (
    event_txns,
    events,
    rooms,
)
from homeserver.storage.shared_reads import RangeReads

# Hot statements, built once: building a statement costs more than running it on SQLite.
_LOCK_ROOM = prepared(
    sa.select(rooms.c.latest_event_id, rooms.c.current_state_group)
    .where(rooms.c.room_id == sa.bindparam("room_id"))
    .with_for_update()
)
_MOVE_ROOM = prepared(
    sa.update(rooms)
    .where(rooms.c.room_id == sa.bindparam("id"))
    .values(
        latest_event_id=sa.bindparam("latest"),
        current_depth=sa.bindparam("depth"),
        current_state_group=sa.bindparam("group"),
    ),
    columns=("id", "latest", "depth", "group"),
)
# A message's compare-and-swap and move of the room in one statement: no state group changes.
_ADVANCE_ROOM = prepared(
    sa.update(rooms)
    .where(
        rooms.c.room_id == sa.bindparam("id"),
        rooms.c.latest_event_id == sa.bindparam("expected"),
    )
    .values(latest_event_id=sa.bindparam("latest"), current_depth=sa.bindparam("depth"))
    .returning(rooms.c.current_state_group),
    columns=("id", "expected", "latest", "depth"),
)
# The columns persist_event gives every new event.
_INSERT_EVENT = prepared(
    sa.insert(events),
    columns=(
        "stream_ordering",
        "event_id",
        "room_id",
        "type",
        "state_key",
        "sender",
        "depth",
        "origin_server_ts",
        "json",
        "unsigned_json",
        "state_group",
        "device_id",
        "txn_id",
    ),
)
_TXN_KEY = str(event_txns.primary_key.name)


class EventStore(EventReads, IncomingWrites, GraphReads):
    """Events, room state and memberships."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Moves on whenever this worker marks an event redacted: events read before are stale.
        self.redaction_epoch = 0
        # State groups never change once written.
        self._state_cache: LRUCache[int, StateMap] = LRUCache(
            maxsize=STATE_CACHE_ENTRIES, getsizeof=state_cache_weight
        )
        self._state_deltas: LRUCache[int, tuple[int, StateMap]] = LRUCache(
            maxsize=STATE_DELTA_ENTRIES, getsizeof=delta_cache_weight
        )
        # Nor does what lies between two committed positions.
        self._windows: RangeReads[StreamWindow] = RangeReads(
            WINDOWS_KEPT,
            WINDOW_MAX_EVENTS,
            EMPTY_WINDOW,
            lambda window: window.weight,
            name="events",
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
        """Persist one event as a forward extremity of its room in place of its prev_events,
        with its edges, its state, and the room's current state after it, in one transaction.

        ``expected_latest`` is the room's latest event (``rooms.latest_event_id``) the event
        was built on: every event that moves the room's extremities replaces it, so it stands
        for the set of extremities the builder saw. Returns the event's stream position, or
        None when the room moved on since (another writer got there first: rebuild and try
        again). Raises ``DuplicateTxn`` when a retry of the same transaction persisted its
        event first.
        """
        pdu = new.pdu
        state_key: str | None = pdu.get("state_key")
        event_json = jsonutil.dumps_str(pdu)
        unsigned_json = jsonutil.dumps_str(new.unsigned) if new.unsigned else None
        prevs = referenced_ids(pdu, "prev_events")
        auths = referenced_ids(pdu, "auth_events")
        if (
            not self._db.is_sqlite
            and state_key is None
            and expected_latest is not None
            and new.prev_state is None
            and new.current_state is None
            and pdu["type"] != "m.room.redaction"
        ):
            return await self._persist_message(
                new, expected_latest, event_json, unsigned_json, prevs, auths
            )
        # A message (no state of its own, on the room's current state) moves the room in the
        # statement that checks it: the compare-and-swap is the UPDATE's condition.
        advance = (
            state_key is None
            and expected_latest is not None
            and new.prev_state is None
            and new.current_state is None
        )
        async with self._db.write() as conn:
            if advance:
                room = (
                    await conn.execute(
                        _ADVANCE_ROOM,
                        {
                            "id": new.room_id,
                            "expected": expected_latest,
                            "latest": new.event_id,
                            "depth": pdu["depth"],
                        },
                    )
                ).first()
                if room is None:
                    return None
            else:
                room = (await conn.execute(_LOCK_ROOM, {"room_id": new.room_id})).first()
                if room is None or room.latest_event_id != expected_latest:
                    return None
            # Everything that needs no stream position comes first: the position is in
            # flight from next_position to COMMIT, holding readers below it.
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
            group = base = before = room.current_state_group
            if new.prev_state is not None:
                # Built on several extremities: its state before is theirs resolved, written
                # whole (a merge is rare; a snapshot keeps its reads short).
                group = base = await self._add_state_group(
                    conn, new.room_id, None, dict(new.prev_state)
                )
            if state_key is not None:
                group = await self._add_state_group(
                    conn, new.room_id, base, {(pdu["type"], state_key): new.event_id}
                )
            room_group = group
            if new.current_state is not None:
                room_group = await self._group_for(
                    conn, new.room_id, new.current_state, [group] if group is not None else []
                )
            if not advance:
                await conn.execute(
                    _MOVE_ROOM,
                    {
                        "id": new.room_id,
                        "latest": new.event_id,
                        "depth": pdu["depth"],
                        "group": room_group,
                    },
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
            if new.current_state is not None:
                current = {} if before is None else await self._state_for_group(conn, before)
                await self._replace_current_state(
                    conn, new.room_id, current, new.current_state, position
                )
            elif new.prev_state is not None:
                after = dict(new.prev_state)
                if state_key is not None:
                    after[(pdu["type"], state_key)] = new.event_id
                current = {} if before is None else await self._state_for_group(conn, before)
                await self._replace_current_state(conn, new.room_id, current, after, position)
            elif state_key is not None:
                await self._update_current_state(conn, new, state_key, position)
            await record_graph(
                conn,
                new.room_id,
                new.event_id,
                prevs,
                auths,
                state=None if state_key is None else (pdu["type"], state_key),
            )
            redacts = redacts_of(pdu)
            if pdu["type"] == "m.room.redaction" and redacts is not None:
                self.redaction_epoch += 1
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
        if state_key is not None or new.prev_state is not None:
            # Committed: the new group's state is the previous one's plus this event, so the
            # room's next send does not load it (an uncommitted group's ID may be reused).
            previous = (
                new.prev_state
                if new.prev_state is not None
                else {}
                if before is None
                else self._state_cache.get(before)
            )
            if previous is not None:
                state = dict(previous)
                if state_key is not None:
                    state[(pdu["type"], state_key)] = new.event_id
                self._cache_states({group: state})
            if state_key is not None and base is not None:
                self._state_deltas[group] = (base, {(pdu["type"], state_key): new.event_id})
        return position

    async def _persist_message(
        self,
        new: NewEvent,
        expected_latest: str,
        event_json: str,
        unsigned_json: str | None,
        prevs: list[str],
        auths: list[str],
    ) -> int | None:
        """``persist_event`` of a message on PostgreSQL: one statement (``MESSAGE``)."""
        pdu = new.pdu
        claim = new.txn_id is not None and new.device_id is not None
        relation = parse_relation(pdu.get("content"), event_type=pdu["type"])
        actions = new.push_actions
        try:
            position = await self._db.write_alone_position(
                Stream.EVENTS,
                MESSAGE[(claim, relation is not None)],
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
                    "prevs": prevs,
                    "auths": auths,
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
        return position
