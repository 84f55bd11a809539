"""State groups: the state at each event, stored as deltas with periodic snapshots, and the
room's current state."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from cachetools import LRUCache

from homeserver.core import jsonutil
from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.events.model import EVENT_COLUMNS, NewEvent, StateMap, StoredEvent, to_event
from homeserver.storage.schema import (
    current_state,
    events,
    room_memberships,
    state_group_entries,
    state_groups,
)

# A state group stores only its delta from the previous one; every this many deltas a full
# snapshot is written, so reading any state walks at most this many groups.
MAX_STATE_CHAIN = 50


_PREV_GROUP = prepared(
    sa.select(state_groups.c.prev_group).where(state_groups.c.id == sa.bindparam("id"))
)


def _state_of_group_query() -> sa.Select[Any]:
    """The entries of :group and of its chain back to the nearest snapshot, oldest first
    (later ones override earlier ones)."""
    chain = (
        sa.select(
            state_groups.c.id,
            state_groups.c.prev_group,
            state_groups.c.is_snapshot,
            sa.literal(0).label("n"),
        )
        .where(state_groups.c.id == sa.bindparam("group"))
        .cte("chain", recursive=True)
    )
    parent = state_groups.alias("parent")
    chain = chain.union_all(
        sa.select(
            parent.c.id, parent.c.prev_group, parent.c.is_snapshot, (chain.c.n + 1).label("n")
        ).where(parent.c.id == chain.c.prev_group, chain.c.is_snapshot.is_(False))
    )
    return (
        sa.select(
            chain.c.n,
            state_group_entries.c.type,
            state_group_entries.c.state_key,
            state_group_entries.c.event_id,
        )
        .join(state_group_entries, state_group_entries.c.state_group == chain.c.id)
        .order_by(chain.c.n.desc())
    )


_STATE_OF_GROUP = prepared(_state_of_group_query())


class StateGroups:
    """The event store's state groups (a part of ``EventStore``)."""

    _db: Database
    _state_cache: LRUCache[int, StateMap]

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
        if entries:  # the state before a room's create event is empty
            await conn.execute(
                sa.insert(state_group_entries),
                [
                    {"state_group": group, "type": t, "state_key": k, "event_id": e}
                    for (t, k), e in entries.items()
                ],
            )
        return group

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
            sa.select(*EVENT_COLUMNS)
            .join(current_state, current_state.c.event_id == events.c.event_id)
            .where(
                current_state.c.room_id == room_id,
                current_state.c.type == event_type,
                current_state.c.state_key == state_key,
            )
        )
        async with self._db.read() as conn:
            r = (await conn.execute(query)).first()
        return to_event(r) if r is not None else None

    async def get_current_state_events(self, room_id: str) -> list[StoredEvent]:
        query = (
            sa.select(*EVENT_COLUMNS)
            .join(current_state, current_state.c.event_id == events.c.event_id)
            .where(current_state.c.room_id == room_id)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [to_event(r) for r in rows]

    # --- writing current state (inside a persisting transaction) ---------------------------

    async def _replace_current_state(
        self, conn: Connection, room_id: str, current: StateMap, after: StateMap, position: int
    ) -> None:
        """The room's current state becomes ``after`` (a resolved state): the entries that
        differ from ``current`` are written, memberships with them, at ``position`` so that
        syncs from before it see them change."""
        gone = [key for key in current if key not in after]
        changed = {key: e for key, e in after.items() if current.get(key) != e}
        for event_type, state_key in gone:
            await conn.execute(
                sa.delete(current_state).where(
                    current_state.c.room_id == room_id,
                    current_state.c.type == event_type,
                    current_state.c.state_key == state_key,
                )
            )
        loaded = {
            r.event_id: r
            for r in (
                await conn.execute(
                    sa.select(events.c.event_id, events.c.sender, events.c.json).where(
                        events.c.event_id.in_(
                            [e for (t, _), e in changed.items() if t == "m.room.member"]
                        )
                    )
                )
            ).all()
        }
        for (event_type, state_key), event_id in changed.items():
            await conn.execute(
                self._db.upsert(
                    current_state,
                    {
                        "room_id": room_id,
                        "type": event_type,
                        "state_key": state_key,
                        "event_id": event_id,
                    },
                    keys=("room_id", "type", "state_key"),
                )
            )
            member = loaded.get(event_id)
            if event_type == "m.room.member" and member is not None:
                content = jsonutil.loads(member.json).get("content", {})
                await self._record_membership(
                    conn, room_id, state_key, event_id, member.sender, content, position
                )
        for event_type, state_key in gone:
            if event_type == "m.room.member":
                await conn.execute(
                    sa.delete(room_memberships).where(
                        room_memberships.c.room_id == room_id,
                        room_memberships.c.user_id == state_key,
                    )
                )

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
        if pdu["type"] == "m.room.member":
            await self._record_membership(
                conn,
                new.room_id,
                state_key,
                new.event_id,
                pdu["sender"],
                pdu.get("content", {}),
                position,
            )

    async def _record_membership(
        self,
        conn: Connection,
        room_id: str,
        user_id: str,
        event_id: str,
        sender: str,
        content: JsonDict,
        position: int,
    ) -> None:
        displayname = content.get("displayname")
        avatar_url = content.get("avatar_url")
        await conn.execute(
            self._db.upsert(
                room_memberships,
                {
                    "room_id": room_id,
                    "user_id": user_id,
                    "membership": content.get("membership"),
                    "event_id": event_id,
                    "sender": sender,
                    "stream_ordering": position,
                    "forgotten": False,
                    "displayname": displayname if isinstance(displayname, str) else None,
                    "avatar_url": avatar_url if isinstance(avatar_url, str) else None,
                },
                keys=("room_id", "user_id"),
            )
        )
