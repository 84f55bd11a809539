"""EventStore on both databases: persisting, compare-and-swap, state groups and snapshots."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

import homeserver.storage.rooms as rooms_module
from homeserver.storage.database import Database
from homeserver.storage.events import (
    MAX_STATE_CHAIN,
    SHARED_TIMELINE_MAX_EVENTS,
    WINDOW_MAX_EVENTS,
    DuplicateTxn,
    EventStore,
    NewEvent,
    StateMap,
)
from homeserver.storage.push import PushAction
from homeserver.storage.rooms import RoomStore
from homeserver.storage.schema import (
    event_push_actions,
    event_relations,
    room_memberships,
    state_groups,
)

ROOM = "!room:test"
ALICE = "@alice:test"
NOW = 1_700_000_000_000


class Room:
    """Builds a chain of events in one room; the store is not asked to check them."""

    def __init__(self, store: EventStore, room_id: str = ROOM) -> None:
        self.store = store
        self.room_id = room_id
        self.latest: str | None = None
        self.depth = 0
        self.count = 0

    def event(
        self, event_type: str, content: dict[str, Any], state_key: str | None = None, **extra: Any
    ) -> NewEvent:
        self.count += 1
        pdu: dict[str, Any] = {
            "room_id": self.room_id,
            "type": event_type,
            "sender": ALICE,
            "content": content,
            "depth": self.depth + 1,
            "origin_server_ts": NOW + self.count,
            "prev_events": [self.latest] if self.latest else [],
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        return NewEvent(pdu, f"${self.room_id}-{self.count}", self.room_id, {}, **extra)

    async def persist(self, event: NewEvent) -> int:
        position = await self.store.persist_event(event, self.latest)
        assert position is not None
        self.latest = event.event_id
        self.depth = event.pdu["depth"]
        return position


async def new_room(db: Database, room_id: str = ROOM) -> Room:
    assert await RoomStore(db).create_room(room_id, "11", ALICE, NOW, is_public=False)
    room = Room(EventStore(db), room_id)
    await room.persist(room.event("m.room.create", {"room_version": "11"}, ""))
    return room


async def test_state_groups_snapshot_every_50(db: Database) -> None:
    room = await new_room(db)
    expected: StateMap = {("m.room.create", ""): room.latest or ""}
    history: list[tuple[str, StateMap]] = []
    for i in range(120):
        # New keys and replacements of old ones, with messages in between.
        key = ("org.example.counter", str(i % 37))
        event = room.event(key[0], {"i": i}, key[1])
        await room.persist(event)
        expected[key] = event.event_id
        history.append((event.event_id, dict(expected)))
        if i % 10 == 0:
            await room.persist(room.event("m.room.message", {"body": str(i)}))
    # A fresh store: nothing comes from the cache of the one that wrote.
    reader = EventStore(db)
    current = await reader.get_current_state_ids(ROOM)
    assert current == expected
    stored = await reader.get_events([event_id for event_id, _ in history])
    latest_group = stored[history[-1][0]].state_group
    assert await reader.get_state_ids(latest_group) == current
    # The state after every one of the 120 changes, read back through its group.
    for event_id, state in history:
        assert await reader.get_state_ids(stored[event_id].state_group) == state, event_id
    # A message shares the group of the state before it.
    messages = await reader.get_room_events(ROOM, limit=200, descending=False)
    for before, message in zip(messages, messages[1:], strict=False):
        if message.state_key is None:
            assert message.state_group == before.state_group
    # One group per state event (121 with the create); a snapshot every MAX_STATE_CHAIN.
    async with db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    state_groups.c.id,
                    state_groups.c.prev_group,
                    state_groups.c.is_snapshot,
                    state_groups.c.chain_length,
                )
                .where(state_groups.c.room_id == ROOM)
                .order_by(state_groups.c.id)
            )
        ).all()
    assert len(rows) == 121
    snapshots = [i for i, r in enumerate(rows) if r.is_snapshot]
    assert snapshots == list(range(0, 121, MAX_STATE_CHAIN))
    assert max(r.chain_length for r in rows) == MAX_STATE_CHAIN - 1
    assert all(r.prev_group == rows[i - 1].id for i, r in enumerate(rows) if i > 0)


async def test_state_before_an_event(db: Database) -> None:
    room = await new_room(db)
    first = room.event("m.room.topic", {"topic": "a"}, "")
    await room.persist(first)
    second = room.event("m.room.topic", {"topic": "b"}, "")
    await room.persist(second)
    reader = EventStore(db)
    stored = await reader.get_event(second.event_id)
    assert stored is not None
    before = await reader.get_state_before(stored)
    assert before[("m.room.topic", "")] == first.event_id
    after = await reader.get_state_ids(stored.state_group)
    assert after[("m.room.topic", "")] == second.event_id


async def test_persist_compare_and_swap(db: Database) -> None:
    room = await new_room(db)
    stale = room.latest
    first = room.event("m.room.message", {"body": "first"})
    position = await room.persist(first)
    # Another writer built on the old latest event: refused, and nothing of it is stored.
    loser = room.event("m.room.message", {"body": "lost"})
    assert await room.store.persist_event(loser, stale) is None
    assert await room.store.get_event(loser.event_id) is None
    # A state event built on a stale extremity changes no state either.
    loser_state = room.event("m.room.name", {"name": "lost"}, "")
    assert await room.store.persist_event(loser_state, stale) is None
    assert ("m.room.name", "") not in await room.store.get_current_state_ids(ROOM)
    # A second create (expected_latest None) of an existing room: refused.
    again = room.event("m.room.create", {}, "")
    assert await room.store.persist_event(again, None) is None
    # An unknown room: refused.
    elsewhere = Room(room.store, "!unknown:test").event("m.room.message", {})
    assert await room.store.persist_event(elsewhere, None) is None
    # The latest event is still the winner, and the next one builds on it.
    stored = await RoomStore(db).get_room(ROOM)
    assert stored is not None and stored.latest_event_id == first.event_id
    nxt = room.event("m.room.message", {"body": "next"})
    assert await room.persist(nxt) > position
    events = await room.store.get_room_events(ROOM, limit=10, descending=False)
    assert [e.content.get("body") for e in events] == [None, "first", "next"]


async def test_memberships_redactions_and_txns(db: Database) -> None:
    room = await new_room(db)
    rooms = RoomStore(db)
    join = room.event("m.room.member", {"membership": "join", "displayname": "Alice"}, ALICE)
    join_position = await room.persist(join)
    m = await rooms.get_membership(ROOM, ALICE)
    assert m is not None and (m.membership, m.displayname) == ("join", "Alice")
    assert (m.event_id, m.stream_ordering) == (join.event_id, join_position)
    message = room.event(
        "m.room.message", {"body": "x"}, device_id="DEV", txn_id="t1", txn_scope="send"
    )
    await room.persist(message)
    assert await room.store.get_txn_event_id(ALICE, "DEV", "send", "t1") == message.event_id
    assert await room.store.get_txn_event_id(ALICE, "OTHER", "send", "t1") is None
    assert await room.store.get_txn_event_id(ALICE, "DEV", "redact", "t1") is None
    redaction = room.event("m.room.redaction", {"redacts": message.event_id})
    await room.persist(redaction)
    stored = await room.store.get_event(message.event_id)
    assert stored is not None and stored.redacted_by == redaction.event_id
    assert (stored.device_id, stored.txn_id) == ("DEV", "t1")
    # A second redaction keeps the first as the one that counts.
    await room.persist(room.event("m.room.redaction", {"redacts": message.event_id}))
    stored = await room.store.get_event(message.event_id)
    assert stored is not None and stored.redacted_by == redaction.event_id
    leave = room.event("m.room.member", {"membership": "leave"}, ALICE)
    await room.persist(leave)
    m = await rooms.get_membership(ROOM, ALICE)
    assert m is not None and m.membership == "leave" and m.displayname is None


async def _rows_of(db: Database, table: sa.Table, event_id: str) -> list[tuple[Any, ...]]:
    async with db.read() as conn:
        return [
            tuple(r)
            for r in (
                await conn.execute(sa.select(table).where(table.c.event_id == event_id))
            ).all()
        ]


async def test_a_message_writes_everything_or_nothing(db: Database) -> None:
    """A message (on PostgreSQL one statement, ``_MESSAGE``): its event row, push actions,
    relation and transaction ID at one position; a stale room or a taken transaction ID
    writes none of them."""
    room = await new_room(db)
    parent = room.latest
    assert parent is not None
    actions = (
        PushAction("@bob:test", "main", '["notify"]', False),
        PushAction("@carol:test", "main", '["notify",{"set_tweak":"highlight"}]', True),
    )
    stale = room.latest
    reaction = room.event(
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": "+1"}},
        device_id="DEV",
        txn_id="t1",
        txn_scope="send",
        push_actions=actions,
    )
    position = await room.persist(reaction)
    stored = await room.store.get_event(reaction.event_id)
    room_row = await RoomStore(db).get_room(ROOM)
    assert stored is not None and room_row is not None
    assert (stored.stream_ordering, stored.depth, stored.device_id, stored.txn_id) == (
        position,
        reaction.pdu["depth"],
        "DEV",
        "t1",
    )
    assert stored.pdu == reaction.pdu and stored.unsigned == {}
    assert stored.state_group == room_row.current_state_group
    assert (room_row.latest_event_id, room_row.current_depth) == (
        reaction.event_id,
        reaction.pdu["depth"],
    )
    pushed = await _rows_of(db, event_push_actions, reaction.event_id)
    assert sorted((r[1], r[0], r[4], r[5], r[6], r[7]) for r in pushed) == [
        (
            a.user_id,
            position,
            a.thread_id,
            a.actions_json,
            a.highlight,
            reaction.pdu["origin_server_ts"],
        )
        for a in actions
    ]
    related = await _rows_of(db, event_relations, reaction.event_id)
    assert [(r[1], r[2], r[6], r[8]) for r in related] == [(parent, "m.annotation", "+1", position)]
    assert await room.store.get_txn_event_id(ALICE, "DEV", "send", "t1") == reaction.event_id

    # Built on a stale latest event: nothing of it, not even its transaction ID.
    lost = room.event(
        "m.room.message",
        {"body": "lost"},
        device_id="DEV",
        txn_id="t2",
        txn_scope="send",
        push_actions=actions[:1],
    )
    assert await room.store.persist_event(lost, stale) is None
    assert await room.store.get_txn_event_id(ALICE, "DEV", "send", "t2") is None
    # The transaction ID of the first, again: refused whole.
    again = room.event(
        "m.room.message",
        {"body": "again"},
        device_id="DEV",
        txn_id="t1",
        txn_scope="send",
        push_actions=actions[:1],
    )
    with pytest.raises(DuplicateTxn):
        await room.store.persist_event(again, room.latest)
    for refused in (lost, again):
        assert await room.store.get_event(refused.event_id) is None
        assert await _rows_of(db, event_push_actions, refused.event_id) == []
    room_row = await RoomStore(db).get_room(ROOM)
    assert room_row is not None and room_row.latest_event_id == reaction.event_id
    # Neither took a position on SQLite: the next message has the one after the reaction's.
    # PostgreSQL's sequence gave the refused transaction ID one (a gap, as every rolled-back
    # allocation leaves), never given again.
    following = await room.persist(room.event("m.room.message", {"body": "next"}))
    if db.is_sqlite:
        assert following == position + 1
    else:
        assert following is not None and following > position


async def test_messages_sent_at_once_get_one_position_each(db: Database) -> None:
    """Rooms written concurrently (on PostgreSQL, on separate connections): every event gets
    its own position, with no gap, and each room keeps its order."""
    rooms = [await new_room(db, f"!r{i}:test") for i in range(4)]
    start = await rooms[0].persist(rooms[0].event("m.room.message", {"body": "start"}))

    async def send(room: Room) -> list[int]:
        return [
            await room.persist(room.event("m.room.message", {"body": str(i)})) for i in range(5)
        ]

    sent = await asyncio.gather(*(send(room) for room in rooms))
    positions = sorted(p for per_room in sent for p in per_room)
    assert positions == list(range(start + 1, start + 1 + 4 * 5))
    assert all(per_room == sorted(per_room) for per_room in sent)
    for room in rooms:
        events = await room.store.get_room_events(room.room_id, limit=10, descending=False)
        assert [e.content.get("body") for e in events][-5:] == ["0", "1", "2", "3", "4"]


async def test_room_events_bounds(db: Database) -> None:
    room = await new_room(db)
    positions = [
        await room.persist(room.event("m.room.message", {"body": str(i)})) for i in range(10)
    ]
    other = await new_room(db, "!other:test")
    await other.persist(other.event("m.room.message", {"body": "elsewhere"}))
    store = room.store
    got = await store.get_room_events(
        ROOM, after=positions[2], upto=positions[6], limit=10, descending=False
    )
    assert [e.content["body"] for e in got] == ["3", "4", "5", "6"]
    got = await store.get_room_events(
        ROOM, after=positions[2], upto=positions[6], limit=2, descending=True
    )
    assert [e.content["body"] for e in got] == ["6", "5"]
    assert await store.get_max_stream_ordering_before(ROOM, positions[4] + 0) == positions[4]
    assert await store.get_max_stream_ordering_before("!nothing:test", 10**9) is None
    changed = await store.get_rooms_changed([ROOM, "!other:test"], positions[-1], 10**9)
    assert changed == {"!other:test"}


# --- what syncs share: windows of the events stream, timelines, memberships -----------------


async def test_stream_window_lists_rooms_and_membership_changes(db: Database) -> None:
    room = await new_room(db)
    other = await new_room(db, "!other:test")
    start = await room.persist(room.event("m.room.message", {"body": "before"}))
    await room.persist(room.event("m.room.member", {"membership": "join"}, "@bob:test"))
    await other.persist(other.event("m.room.message", {"body": "elsewhere"}))
    end = await room.persist(room.event("m.room.message", {"body": "after"}))
    store = EventStore(db)
    window = await store.get_window(start, end)
    assert window is not None
    assert window.rooms == {ROOM, "!other:test"}
    assert window.members == {"@bob:test"}
    # Only the range counts: the message before it is not in, the join alone is.
    assert await store.get_window(start + 1, start + 1) == await store.get_window(end, start)
    only_join = await store.get_window(start, start + 1)
    assert only_join is not None and only_join.members == {"@bob:test"}
    last = await store.get_window(end - 1, end)
    assert last is not None and last.rooms == {ROOM} and not last.members
    assert window.parents == frozenset()
    # A reaction to the last message: its parent got a child in the window.
    parent = room.latest
    reaction = await room.persist(
        room.event(
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": "+1"}},
        )
    )
    with_child = await store.get_window(start, reaction)
    assert with_child is not None and with_child.parents == {parent}
    # Further back than WINDOW_MAX_EVENTS: no window, and syncs ask about their rooms.
    assert await store.get_window(end - WINDOW_MAX_EVENTS - 1, end) is None
    assert await store.get_rooms_changed([ROOM, "!none:test"], 0, end) == {ROOM}
    assert await store.get_rooms_changed([ROOM, "!none:test"], end - 1, end) == {ROOM}
    assert await store.get_rooms_changed(["!other:test"], end - 1, end) == set()


async def test_recent_events_match_the_room_events_and_are_not_shared_mutably(db: Database) -> None:
    room = await new_room(db)
    other = await new_room(db, "!other:test")
    start = await room.persist(room.event("m.room.message", {"body": "0"}))
    for i in range(1, 15):  # two rooms' events interleaved, as a window holds them
        end = await room.persist(room.event("m.room.message", {"body": str(i)}))
        await other.persist(other.event("m.room.message", {"body": f"other {i}"}))
    store = EventStore(db)
    short = end - SHARED_TIMELINE_MAX_EVENTS
    for after, limit in (
        (start, 3),
        (start, 30),
        (end - 1, 3),
        (end - 2, 3),
        (short, 4),
        (short, 0),
        (short - 1, 5),
        (0, 4),
        (end, 3),
    ):
        expected = await store.get_room_events(
            ROOM, after=after, upto=end, limit=limit, descending=True
        )
        first = await store.get_recent_events(ROOM, after, end, limit)
        first.clear()  # a caller's list is its own
        assert await store.get_recent_events(ROOM, after, end, limit) == expected
    # A short range's come from its window (which every sync woken by them shares).
    window = await store.get_window(short, end)
    assert window is not None and window.rows is not None
    assert len(window.rows) == SHARED_TIMELINE_MAX_EVENTS
    assert [e.content["body"] for e in window.events_of(ROOM) or ()] == [
        str(i) for i in range(5, 15)
    ]
    longer = await store.get_window(short - 1, end)
    assert longer is not None and longer.rows is None and longer.events_of(ROOM) is None


async def test_sync_memberships_are_read_again_only_after_a_membership_change(db: Database) -> None:
    room = await new_room(db)
    events = EventStore(db)
    store = RoomStore(db, events)
    bob = "@bob:test"
    joined = await room.persist(room.event("m.room.member", {"membership": "join"}, bob))
    assert [m.membership for m in await store.get_sync_memberships(bob, joined)] == ["join"]
    # A message changes no membership: the kept list is used (even if the table said
    # otherwise, which only a membership event can make it do).
    message = await room.persist(room.event("m.room.message", {"body": "hi"}))
    async with db.write() as conn:
        await conn.execute(
            sa.update(room_memberships)
            .where(room_memberships.c.user_id == bob)
            .values(displayname="unseen")
        )
    kept = await store.get_sync_memberships(bob, message)
    assert [m.displayname for m in kept] == [None]
    # Someone else's membership event does not concern bob either.
    carol = await room.persist(room.event("m.room.member", {"membership": "join"}, "@c:test"))
    assert [m.displayname for m in await store.get_sync_memberships(bob, carol)] == [None]
    # Bob's own does: read again.
    left = await room.persist(room.event("m.room.member", {"membership": "leave"}, bob))
    found = await store.get_sync_memberships(bob, left)
    assert [(m.membership, m.stream_ordering) for m in found] == [("leave", left)]
    # Forgetting the room drops the kept list at once.
    await store.set_forgotten(ROOM, bob)
    assert [m.forgotten for m in await store.get_sync_memberships(bob, left)] == [True]
    # Too far apart for a window: read again.
    for i in range(WINDOW_MAX_EVENTS + 1):
        last = await room.persist(room.event("m.room.message", {"body": str(i)}))
    async with db.write() as conn:
        await conn.execute(
            sa.update(room_memberships)
            .where(room_memberships.c.user_id == bob)
            .values(displayname="seen")
        )
    assert [m.displayname for m in await store.get_sync_memberships(bob, last)] == ["seen"]


async def test_kept_memberships_are_bounded_by_their_number(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rooms_module, "SYNC_MEMBERSHIPS_KEPT", 3)
    events = EventStore(db)
    store = RoomStore(db, events)
    first = await new_room(db)
    second = await new_room(db, "!second:test")
    for room in (first, second):
        for user in ("@bob:test", "@carol:test"):
            await room.persist(room.event("m.room.member", {"membership": "join"}, user))
    upto = await first.persist(first.event("m.room.member", {"membership": "join"}, "@d:test"))
    # Two memberships and the entry itself: 3, all the room there is.
    assert len(await store.get_sync_memberships("@bob:test", upto)) == 2
    assert set(store._for_sync) == {"@bob:test"}
    # Another user's take the place; one too many to keep at all is read and not kept.
    assert len(await store.get_sync_memberships("@d:test", upto)) == 1
    assert set(store._for_sync) == {"@d:test"}
    async with db.write() as conn:
        await conn.execute(
            sa.insert(room_memberships),
            [
                {
                    "room_id": f"!extra{i}:test",
                    "user_id": "@carol:test",
                    "membership": "join",
                    "event_id": f"$x{i}",
                    "sender": "@carol:test",
                    "stream_ordering": 1,
                    "forgotten": False,
                }
                for i in range(2)
            ],
        )
    assert len(await store.get_sync_memberships("@carol:test", upto)) == 4
    assert "@carol:test" not in store._for_sync
