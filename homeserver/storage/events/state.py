"""State groups: the state at each event, stored as deltas with periodic snapshots, and the
room's current state."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from cachetools import LRUCache

from homeserver.core import jsonutil
from homeserver.core.types import JsonDict
from homeserver.storage.database import Connection, Database, prepared
from homeserver.storage.events.model import (
    EVENT_COLUMNS,
    NewEvent,
    StateKey,
    StateMap,
    StoredEvent,
    to_event,
)
from homeserver.storage.schema import (
    current_state,
    events,
    rejections,
    room_memberships,
    state_group_entries,
    state_groups,
)

# A state group stores only its delta from the previous one; every this many deltas a full
# snapshot is written, so reading any state walks at most this many groups.
MAX_STATE_CHAIN = 50
# The state-group cache is bounded by the entries it holds, not the groups: a room of
# 10 000 members has as many entries in each of its groups' states.
STATE_CACHE_ENTRIES = 1_000_000


# Besides whole states, the deltas of the groups read (a group's entries and the group it
# is a delta on): a group whose whole state was evicted is rebuilt from a cached ancestor's
# and the deltas since, without a read. Bounded by entries too.
STATE_DELTA_ENTRIES = 200_000


def state_cache_weight(state: StateMap) -> int:
    return len(state) + 1


def delta_cache_weight(link: tuple[int, StateMap]) -> int:
    return len(link[1]) + 1


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
            chain.c.id,
            chain.c.prev_group,
            chain.c.is_snapshot,
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
    _state_deltas: LRUCache[int, tuple[int, StateMap]]

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
            entries = {**await self._known_state(conn, prev), **delta}
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

    def forget_state_groups(self, groups: list[int]) -> None:
        """Groups purged with their room (the admin API): their IDs may be given again."""
        for group in groups:
            self._state_cache.pop(group, None)

    # --- reading state ---------------------------------------------------------------------

    async def get_state_ids(self, state_group: int) -> StateMap:
        cached = self._state_cache.get(state_group)
        if cached is None:
            cached = self._rebuilt(state_group)
        if cached is None:
            async with self._db.read() as conn:
                rows = (await conn.execute(_STATE_OF_GROUP, {"group": state_group})).all()
            cached = self._remember_chain(rows)
            self._cache_states({state_group: cached})
        return dict(cached)

    def _rebuilt(self, group: int) -> StateMap | None:
        """The group's state from the nearest cached ancestor's and the cached deltas since
        (committed groups only are cached), or None when a link is missing."""
        deltas: list[StateMap] = []
        current = group
        for _ in range(MAX_STATE_CHAIN + 1):
            base = self._state_cache.get(current)
            if base is not None:
                break
            link = self._state_deltas.get(current)
            if link is None:
                return None
            current, delta = link
            deltas.append(delta)
        else:
            return None
        state = dict(base)
        for delta in reversed(deltas):
            state.update(delta)
        self._cache_states({group: state})
        return state

    def _remember_chain(self, rows: Sequence[Any]) -> StateMap:
        """A group's state from the rows of ``_STATE_OF_GROUP`` (its chain back to a
        snapshot); the chain's deltas and its snapshot's state are cached on the way."""
        state: StateMap = {}
        own: dict[int, StateMap] = {}
        links: dict[int, tuple[int | None, bool]] = {}
        for r in rows:
            key = (r.type, r.state_key)
            state[key] = r.event_id
            own.setdefault(int(r.id), {})[key] = r.event_id
            links[int(r.id)] = (None if r.prev_group is None else int(r.prev_group), r.is_snapshot)
        for group, (prev, snapshot) in links.items():
            if snapshot:
                self._cache_states({group: own[group]})
            elif prev is not None and delta_cache_weight((prev, own[group])) <= (
                STATE_DELTA_ENTRIES
            ):
                self._state_deltas[group] = (prev, own[group])
        return state

    async def get_state_before(self, event: StoredEvent) -> StateMap:
        """The state the event was sent in (for a state event, without itself)."""
        if event.state_key is None:
            return await self.get_state_ids(event.state_group)
        async with self._db.read() as conn:
            prev = (await conn.execute(_PREV_GROUP, {"id": event.state_group})).scalar()
        return await self.get_state_ids(int(prev)) if prev is not None else {}

    async def state_ids_at(self, event_id: str) -> tuple[StateMap, StateMap] | None:
        """The room's state before the event and after it (federation's /state_ids and
        /state), or None when the event is unknown or an outlier (no place in the graph).
        Both are read through the state-group cache, so the states of a busy room's recent
        events are read once."""
        async with self._db.read() as conn:
            r = (
                await conn.execute(
                    sa.select(
                        events.c.state_key,
                        events.c.state_group,
                        state_groups.c.prev_group,
                        rejections.c.event_id.label("rejected"),
                    )
                    .select_from(events)
                    .join(state_groups, state_groups.c.id == events.c.state_group, isouter=True)
                    .join(rejections, rejections.c.event_id == events.c.event_id, isouter=True)
                    .where(events.c.event_id == event_id)
                )
            ).first()
        if r is None or int(r.state_group) == 0:
            return None
        after = await self.get_state_ids(int(r.state_group))
        if r.state_key is None or r.rejected is not None:
            # A message, or a rejected state event, changes nothing.
            return after, dict(after)
        before = await self.get_state_ids(int(r.prev_group)) if r.prev_group is not None else {}
        return before, after

    async def _known_state(self, conn: Connection, group: int) -> StateMap:
        """Inside a transaction: the group's state from the cache (committed groups only
        are there), else read on ``conn`` (which sees the transaction's own groups). Not to
        be changed: it may be the cached map."""
        cached = self._state_cache.get(group)
        return cached if cached is not None else await self._state_for_group(conn, group)

    def _cache_states(self, states: dict[int, StateMap]) -> None:
        """After the transaction that wrote these groups committed."""
        for group, state in states.items():
            if state_cache_weight(state) <= STATE_CACHE_ENTRIES:
                self._state_cache[group] = state

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

    async def get_current_state_entries(self, room_id: str, keys: Collection[StateKey]) -> StateMap:
        """The room's current state at ``keys`` only (what the auth rules read of it), without
        reading a large room's whole membership."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        query = sa.select(
            current_state.c.type, current_state.c.state_key, current_state.c.event_id
        ).where(
            current_state.c.room_id == room_id,
            sa.tuple_(current_state.c.type, current_state.c.state_key).in_(wanted),
        )
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
        members = [e for (t, _), e in changed.items() if t == "m.room.member"]
        loaded: dict[str, Any] = {}
        for i in range(0, len(members), _CHUNK):
            found = await conn.execute(
                sa.select(events.c.event_id, events.c.sender, events.c.json).where(
                    events.c.event_id.in_(members[i : i + _CHUNK])
                )
            )
            loaded.update((r.event_id, r) for r in found.all())
        # Joining a large room writes its whole membership: one statement, many rows.
        state_rows: list[dict[str, Any]] = [
            {"v_room_id": room_id, "v_type": t, "v_state_key": k, "v_event_id": e}
            for (t, k), e in changed.items()
        ]
        member_rows: list[dict[str, Any]] = []
        for (event_type, state_key), event_id in changed.items():
            member = loaded.get(event_id)
            if event_type == "m.room.member" and member is not None:
                content = jsonutil.loads(member.json).get("content", {})
                member_rows.append(
                    _membership_row(room_id, state_key, event_id, member.sender, content, position)
                )
        for table, rows, keys in (
            (current_state, state_rows, ("room_id", "type", "state_key")),
            (room_memberships, member_rows, ("room_id", "user_id")),
        ):
            if rows:
                statement = self._db.upsert(
                    table, {c[2:]: sa.bindparam(c) for c in rows[0]}, keys=keys
                )
                for i in range(0, len(rows), _CHUNK):
                    await conn.execute(statement, rows[i : i + _CHUNK])
        # A member the resolved state no longer has is not in the room: a user's row says
        # so at ``position`` (syncs see the change, /joined_rooms and member lists drop the
        # room), naming the membership event it last had, as no event of its own ends it.
        for event_type, state_key in gone:
            if event_type == "m.room.member":
                await conn.execute(
                    sa.update(room_memberships)
                    .where(
                        room_memberships.c.room_id == room_id,
                        room_memberships.c.user_id == state_key,
                    )
                    .values(membership="leave", stream_ordering=position)
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
        row = _membership_row(room_id, user_id, event_id, sender, content, position)
        await conn.execute(
            self._db.upsert(
                room_memberships, {k[2:]: v for k, v in row.items()}, keys=("room_id", "user_id")
            )
        )


# Rows written by one statement at most (and IDs in one IN list): within every database's
# limit on bound parameters.
_CHUNK = 1000


def _membership_row(
    room_id: str, user_id: str, event_id: str, sender: str, content: JsonDict, position: int
) -> dict[str, Any]:
    """A room_memberships row, its keys the columns prefixed with ``v_`` (bound parameters
    may not take a column's name)."""
    displayname = content.get("displayname")
    avatar_url = content.get("avatar_url")
    return {
        "v_room_id": room_id,
        "v_user_id": user_id,
        "v_membership": content.get("membership"),
        "v_event_id": event_id,
        "v_sender": sender,
        "v_stream_ordering": position,
        "v_forgotten": False,
        "v_displayname": displayname if isinstance(displayname, str) else None,
        "v_avatar_url": avatar_url if isinstance(avatar_url, str) else None,
    }
