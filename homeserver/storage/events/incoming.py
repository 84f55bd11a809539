"""Persisting events from other servers, with the verdict of the checks they went through:
several prev_events, arriving out of order, outliers, rejected and soft-failed events.

The checks (signatures, hashes, auth rules, state resolution) belong to the pipeline that
calls this; the store records their outcome in one transaction per batch. Events never
served to clients (outliers, rejected, soft-failed) are numbered downwards from -1 on their
own counter, below every position of the events stream, so no read of the stream or of a
room's timeline meets them. Backfilled events (history asked of other servers) are served
but are no news: numbered downwards from ``BACKFILL_BASE`` on a third counter, they are met
by a room's timeline in topological order (``/messages``), never by the events stream
(``/sync``); they move neither the room's forward extremities nor its current state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import sqlalchemy as sa

from homeserver.core import jsonutil
from homeserver.core.streams import Stream
from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, prepared
from homeserver.storage.events.graph import record_graph, referenced_ids
from homeserver.storage.events.model import StateMap
from homeserver.storage.events.state import StateGroups
from homeserver.storage.push import PushAction, record_push_actions
from homeserver.storage.relations import record_relation
from homeserver.storage.schema import (
    BACKFILL_BASE,
    BACKFILLED_EVENTS,
    UNSERVED_EVENTS,
    event_auth,
    event_backward_extremities,
    event_edges,
    event_forward_extremities,
    event_relations,
    events,
    pending_redactions,
    rejections,
    rooms,
    stream_positions,
)

# Outliers have no state of their own; state groups are numbered from 1.
NO_STATE_GROUP = 0


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """An event from another server, checked, with the pipeline's verdict."""

    pdu: JsonDict
    event_id: str
    # Known without its place in the graph (an auth event fetched on its own): stored for
    # what refers to it, no edges to its prev_events, no state.
    outlier: bool = False
    # Why the auth rules refused it, if they did (spec, "Rejected events").
    rejected: str | None = None
    # Passed the auth rules against the state before it but not against the current state
    # (spec, "Soft failure"): stored, never served, never a forward extremity.
    soft_failed: bool = False
    # The state before it (its prev_events' states, resolved); required unless an outlier.
    state_before: StateMap | None = None
    push_actions: tuple[PushAction, ...] = ()
    # For a redaction: the event it redacts, set only when the pipeline found that it
    # applies (the room version's place for `redacts`, the sender's power or server).
    redacts: str | None = None
    # For a redaction whose target is not held yet: the target. The redaction is applied when
    # the target is persisted: to anyone's event with ``redacts_any`` (the sender had the
    # power, or room versions 1-2 whose auth rules checked it), else only to an event whose
    # sender shares the redaction sender's server.
    awaits: str | None = None
    redacts_any: bool = False
    # History asked of another server (federation /backfill): served, but below the events
    # stream, and it changes neither the room's extremities nor its current state.
    backfilled: bool = False

    @property
    def served(self) -> bool:
        return not (self.outlier or self.soft_failed or self.rejected is not None)


_NEXT_UNSERVED = prepared(
    sa.update(stream_positions)
    .where(stream_positions.c.stream == UNSERVED_EVENTS)
    .values(position=stream_positions.c.position + 1)
    .returning(stream_positions.c.position)
)
_NEXT_BACKFILLED = prepared(
    sa.update(stream_positions)
    .where(stream_positions.c.stream == BACKFILLED_EVENTS)
    .values(position=stream_positions.c.position + 1)
    .returning(stream_positions.c.position)
)
_LOCK_ROOM = prepared(
    sa.select(rooms.c.latest_event_id, rooms.c.current_depth, rooms.c.current_state_group)
    .where(rooms.c.room_id == sa.bindparam("room_id"))
    .with_for_update()
)
_KNOWN = prepared(
    sa.select(events.c.event_id, events.c.outlier, events.c.state_group).where(
        events.c.event_id.in_(sa.bindparam("ids", expanding=True))
    )
)
# A child that is served: an event that arrives after it is no forward extremity.
_child = events.alias("child")
_HAS_CHILD = prepared(
    sa.select(event_edges.c.event_id)
    .join(_child, _child.c.event_id == event_edges.c.event_id)
    .where(event_edges.c.prev_event_id == sa.bindparam("id"), _child.c.stream_ordering > 0)
    .limit(1)
)
# Of an event's prev_events, those in the graph (not outliers: they have no state group).
_IN_GRAPH = prepared(
    sa.select(events.c.event_id).where(
        events.c.event_id.in_(sa.bindparam("ids", expanding=True)),
        events.c.state_group != NO_STATE_GROUP,
    )
)
_b = event_backward_extremities
_FILLED = prepared(
    sa.delete(_b).where(
        _b.c.room_id == sa.bindparam("room_id"), _b.c.event_id == sa.bindparam("id")
    )
)
_p = pending_redactions
_PENDING_FOR = prepared(
    sa.select(_p.c.redaction_id, _p.c.sender, _p.c.any_sender)
    .where(_p.c.target_id == sa.bindparam("id"), _p.c.room_id == sa.bindparam("room_id"))
    .order_by(_p.c.redaction_id)
)
_EXTREMITIES = prepared(
    sa.select(events.c.event_id, events.c.state_group)
    .join(event_forward_extremities, event_forward_extremities.c.event_id == events.c.event_id)
    .where(event_forward_extremities.c.room_id == sa.bindparam("room_id"))
)


class IncomingWrites(StateGroups):
    """The event store's persisting of events from other servers (a part of ``EventStore``)."""

    redaction_epoch: int

    @overload
    async def persist_incoming(
        self,
        room_id: str,
        batch: Sequence[IncomingEvent],
        received_ts: int,
        *,
        current_state: StateMap | None = None,
        expected_latest: None = None,
    ) -> dict[str, int]: ...

    @overload
    async def persist_incoming(
        self,
        room_id: str,
        batch: Sequence[IncomingEvent],
        received_ts: int,
        *,
        current_state: StateMap | None = None,
        expected_latest: str,
    ) -> dict[str, int] | None: ...

    async def persist_incoming(
        self,
        room_id: str,
        batch: Sequence[IncomingEvent],
        received_ts: int,
        *,
        current_state: StateMap | None = None,
        expected_latest: str | None = None,
    ) -> dict[str, int] | None:
        """Persist ``batch`` (parents before children) in one transaction; returns each new
        event's stream ordering (negative: never served). Events known already are left
        alone, except an outlier now given its place in the graph.

        ``current_state`` is the room's state after the batch (its forward extremities'
        states resolved), when the batch leaves several extremities; without it, the room's
        state becomes that of its only extremity, if it has one.

        ``expected_latest`` is the room's latest event (``rooms.latest_event_id``) when the
        caller read the extremities and current state it computed ``current_state`` from:
        if another writer moved the room since, nothing is persisted and None is returned
        (compute again and retry), as ``persist_event`` does for local sends.
        """
        ids = [e.event_id for e in batch]
        async with self._db.write() as conn:
            room = (await conn.execute(_LOCK_ROOM, {"room_id": room_id})).first()
            if room is None:
                raise LookupError(room_id)
            if expected_latest is not None and room.latest_event_id != expected_latest:
                return None
            known = {r.event_id: r for r in (await conn.execute(_KNOWN, {"ids": ids})).all()}
            positions: dict[str, int] = {}
            groups: dict[str, int] = {r.event_id: int(r.state_group) for r in known.values()}
            # The prev_events' groups: an event's state is usually its parent's, or a delta
            # on it (not a snapshot of a large room's whole state).
            parents = {p for e in batch for p in referenced_ids(e.pdu, "prev_events")}
            parents -= set(ids)
            if parents:
                rows = (await conn.execute(_KNOWN, {"ids": sorted(parents)})).all()
                groups.update((r.event_id, int(r.state_group)) for r in rows)
            last: tuple[str, int, int] | None = None  # the last served event, depth, position
            written: dict[int, StateMap] = {}  # the states of the groups it uses, to cache
            deltas: dict[int, tuple[int, StateMap]] = {}  # and the deltas it wrote
            for event in batch:
                found = known.get(event.event_id)
                if found is not None and (event.outlier or not found.outlier):
                    continue
                if found is not None:  # an outlier no more: it is stored again, in place
                    await conn.execute(sa.delete(events).where(events.c.event_id == event.event_id))
                    await conn.execute(
                        sa.delete(event_auth).where(event_auth.c.event_id == event.event_id)
                    )
                position, group = await self._persist_one(
                    conn, room_id, event, groups, received_ts, written, deltas
                )
                positions[event.event_id] = position
                groups[event.event_id] = group
                if event.served and not event.backfilled:
                    last = (event.event_id, event.pdu["depth"], position)
            if last is not None:
                await self._move_room(conn, room_id, room, last, current_state, written)
        # Committed: the next event of the room finds its parents' states without a read.
        self._cache_states(written)
        self._state_deltas.update(deltas)
        return positions

    async def _persist_one(
        self,
        conn: Connection,
        room_id: str,
        event: IncomingEvent,
        groups: dict[str, int],
        received_ts: int,
        written: dict[int, StateMap],
        deltas: dict[int, tuple[int, StateMap]],
    ) -> tuple[int, int]:
        pdu = event.pdu
        state_key: str | None = pdu.get("state_key")
        prevs = referenced_ids(pdu, "prev_events")
        auths = referenced_ids(pdu, "auth_events")
        if event.served and event.backfilled:
            position = BACKFILL_BASE - int((await conn.execute(_NEXT_BACKFILLED)).scalar_one())
        elif event.served:
            position = await self._db.next_position(conn, Stream.EVENTS)
        else:
            position = -int((await conn.execute(_NEXT_UNSERVED)).scalar_one())
        group = NO_STATE_GROUP
        if not event.outlier:
            if event.state_before is None:
                raise ValueError(f"{event.event_id}: an event in the graph needs its state")
            group = await self._group_for(
                conn, room_id, event.state_before, [groups[p] for p in prevs if p in groups]
            )
            written[group] = dict(event.state_before)
            if state_key is not None and event.rejected is None:
                # A rejected event changes no state: the state after it is the state before.
                own = {(pdu["type"], state_key): event.event_id}
                before_group = group
                group = await self._add_state_group(conn, room_id, group, own)
                written[group] = {**event.state_before, **own}
                deltas[group] = (before_group, own)
        await conn.execute(
            sa.insert(events).values(
                stream_ordering=position,
                event_id=event.event_id,
                room_id=room_id,
                type=pdu["type"],
                state_key=state_key,
                sender=pdu["sender"],
                depth=pdu["depth"],
                origin_server_ts=pdu["origin_server_ts"],
                json=jsonutil.dumps_str(pdu),
                state_group=group,
                outlier=event.outlier,
                soft_failed=event.soft_failed,
            )
        )
        if event.rejected is not None:
            await conn.execute(
                self._db.upsert(
                    rejections,
                    {
                        "event_id": event.event_id,
                        "reason": event.rejected,
                        "rejected_ts": received_ts,
                    },
                    keys=("event_id",),
                )
            )
        # An outlier's prev_events say nothing of where it stands; its auth events do. An
        # event whose child came first (out of order) is no extremity, but its parents are
        # no longer either.
        await record_graph(
            conn,
            room_id,
            event.event_id,
            [] if event.outlier else prevs,
            auths,
            link=event.served and not event.backfilled,
            extremity=event.served
            and not event.backfilled
            and not await self._has_child(conn, event.event_id),
            state=None if state_key is None else (pdu["type"], state_key),
            waiting=True,
        )
        if not event.outlier:
            await self._record_backward_extremities(conn, room_id, event.event_id, prevs)
        if event.served:
            redacts = event.redacts
            if pdu["type"] == "m.room.redaction" and redacts is not None:
                self.redaction_epoch += 1
                await conn.execute(
                    sa.update(events)
                    .where(
                        events.c.event_id == redacts,
                        events.c.room_id == room_id,
                        events.c.redacted_by.is_(None),
                    )
                    .values(redacted_by=event.event_id)
                )
            if pdu["type"] == "m.room.redaction" and event.awaits not in (None, event.event_id):
                await conn.execute(
                    self._db.insert_ignore_statement(_p, ("target_id", "redaction_id")),
                    {
                        "target_id": event.awaits,
                        "redaction_id": event.event_id,
                        "room_id": room_id,
                        "sender": pdu["sender"],
                        "any_sender": event.redacts_any,
                    },
                )
            await record_relation(conn, pdu, event.event_id, room_id, position, redacts)
            await record_push_actions(
                conn, event.push_actions, room_id, event.event_id, position, pdu["origin_server_ts"]
            )
        await self._apply_pending_redaction(conn, room_id, event.event_id, pdu["sender"])
        return position, group

    async def _apply_pending_redaction(
        self, conn: Connection, room_id: str, event_id: str, sender: str
    ) -> None:
        """A redaction that came before the event: applied now, by the rules it was received
        with (the sender's power then, or a shared server); the event relates to nothing."""
        server = sender.partition(":")[2]
        for row in (await conn.execute(_PENDING_FOR, {"id": event_id, "room_id": room_id})).all():
            if row.any_sender or row.sender.partition(":")[2] == server:
                self.redaction_epoch += 1
                await conn.execute(
                    sa.update(events)
                    .where(events.c.event_id == event_id)
                    .values(redacted_by=row.redaction_id)
                )
                await conn.execute(
                    sa.delete(event_relations).where(event_relations.c.event_id == event_id)
                )
                return

    async def _record_backward_extremities(
        self, conn: Connection, room_id: str, event_id: str, prevs: Sequence[str]
    ) -> None:
        """The event is in the graph now, so no longer where history stops; those of its
        prev_events we lack are."""
        await conn.execute(_FILLED, {"room_id": room_id, "id": event_id})
        if not prevs:
            return
        held = {r.event_id for r in (await conn.execute(_IN_GRAPH, {"ids": list(prevs)})).all()}
        lacking = [p for p in prevs if p not in held]
        if lacking:
            await conn.execute(
                self._db.insert_ignore_statement(_b, ("room_id", "event_id")),
                [{"room_id": room_id, "event_id": p} for p in lacking],
            )

    async def get_backward_extremities(self, room_id: str) -> list[str]:
        """The events the room's graph names as prev_events but lacks: where backfill
        starts."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(_b.c.event_id).where(_b.c.room_id == room_id).order_by(_b.c.event_id)
                )
            ).all()
        return [r.event_id for r in rows]

    async def get_backward_extremity_depths(self, room_id: str) -> dict[str, int]:
        """The room's backward extremities, each with the greatest depth of the events in
        the graph that name it as a prev_event (the gap lies just below them)."""
        citing = events.alias("citing")
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(_b.c.event_id, sa.func.max(citing.c.depth).label("depth"))
                    .join(event_edges, event_edges.c.prev_event_id == _b.c.event_id)
                    .join(citing, citing.c.event_id == event_edges.c.event_id)
                    .where(_b.c.room_id == room_id, citing.c.room_id == room_id)
                    .group_by(_b.c.event_id)
                )
            ).all()
        return {r.event_id: int(r.depth) for r in rows}

    async def _has_child(self, conn: Connection, event_id: str) -> bool:
        return (await conn.execute(_HAS_CHILD, {"id": event_id})).first() is not None

    async def _group_for(
        self, conn: Connection, room_id: str, state: StateMap, candidates: Sequence[int]
    ) -> int:
        """A state group holding ``state``: a prev_event's when it is the same, else a delta
        on one when the state only adds or replaces entries, else a snapshot."""
        for candidate in dict.fromkeys(candidates):
            if candidate == NO_STATE_GROUP:
                continue
            known = await self._known_state(conn, candidate)
            if known == state:
                return candidate
            if all(key in state for key in known):
                delta = {key: e for key, e in state.items() if known.get(key) != e}
                return await self._add_state_group(conn, room_id, candidate, delta)
        return await self._add_state_group(conn, room_id, None, dict(state))

    async def _move_room(
        self,
        conn: Connection,
        room_id: str,
        room: Any,
        last: tuple[str, int, int],
        current_state: StateMap | None,
        written: dict[int, StateMap],
    ) -> None:
        """The room's token moves to the batch's last served event (it changed the forward
        extremities, so local senders that built on the old ones rebuild), and its current
        state to the resolved one given, or to its only extremity's."""
        event_id, depth, position = last
        before: int | None = room.current_state_group
        heads = (await conn.execute(_EXTREMITIES, {"room_id": room_id})).all()
        group = before
        if current_state is not None:
            group = await self._group_for(
                conn, room_id, current_state, [int(h.state_group) for h in heads]
            )
            written[group] = dict(current_state)
        elif len(heads) == 1:
            group = int(heads[0].state_group)
        if group is not None and group != before:
            old = {} if before is None else await self._known_state(conn, before)
            new = written.get(group) or await self._known_state(conn, group)
            await self._replace_current_state(conn, room_id, old, new, position)
        await conn.execute(
            sa.update(rooms)
            .where(rooms.c.room_id == room_id)
            .values(latest_event_id=event_id, current_depth=depth, current_state_group=group)
        )
