"""Events from other servers on both databases: several prev_events, out of order, outliers,
rejected and soft-failed events (stored, never served, never extremities)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, IncomingEvent, StateMap
from homeserver.storage.rooms import RoomStore
from homeserver.storage.schema import events
from tests.storage.test_room_graph import ALICE, BOB, ROOM, Graph, new_graph

EVE = "@eve:remote"
NOW = 1_700_000_100_000
AUTHS = ["$create", "$alice", "$pl"]
BASE: StateMap = {
    ("m.room.create", ""): "$create",
    ("m.room.member", ALICE): "$alice",
    ("m.room.power_levels", ""): "$pl",
}


def remote(
    event_id: str,
    prevs: list[str],
    depth: int,
    event_type: str = "m.room.message",
    state_key: str | None = None,
    content: dict[str, Any] | None = None,
    **verdict: Any,
) -> IncomingEvent:
    pdu: dict[str, Any] = {
        "room_id": ROOM,
        "type": event_type,
        "sender": EVE,
        "content": content or {"body": event_id},
        "depth": depth,
        "origin_server_ts": NOW + depth,
        "prev_events": prevs,
        "auth_events": AUTHS,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    if not verdict.get("outlier"):
        verdict.setdefault("state_before", BASE)
    return IncomingEvent(pdu, event_id, **verdict)


async def extremities(store: EventStore) -> list[str]:
    return sorted(e.event_id for e in await store.get_forward_extremities(ROOM))


async def timeline(store: EventStore) -> list[str]:
    found = await store.get_room_events(ROOM, limit=100, descending=False)
    return [e.event_id for e in found]


async def test_a_fork_from_another_server_and_its_merge(db: Database) -> None:
    graph = await new_graph(db)
    store = graph.store
    positions = await store.persist_incoming(
        ROOM, [remote("$r1", ["$pl"], 4), remote("$r2", ["$pl"], 4)], NOW
    )
    assert positions is not None
    assert all(p > 0 for p in positions.values())
    assert await extremities(store) == ["$r1", "$r2"]
    topic = remote("$topic", ["$r1", "$r2"], 5, "m.room.topic", "", {"topic": "t"})
    await store.persist_incoming(ROOM, [topic], NOW)
    assert await extremities(store) == ["$topic"]
    assert await store.get_prev_event_ids("$topic") == ["$r1", "$r2"]
    # The only extremity's state is the room's now.
    assert await store.get_current_state_ids(ROOM) == {**BASE, ("m.room.topic", ""): "$topic"}
    assert await timeline(store) == ["$create", "$alice", "$pl", "$r1", "$r2", "$topic"]
    # The local sender's token moved: what it built on the old extremities is refused.
    late = graph.event("$late", "m.room.message", ["$pl"], AUTHS)
    assert await store.persist_event(late, graph.latest) is None
    room = await RoomStore(db).get_room_head(ROOM)
    assert room is not None and [e.event_id for e in room.forward_extremities] == ["$topic"]


async def test_a_resolved_current_state_is_taken_when_extremities_remain(db: Database) -> None:
    graph = await new_graph(db)
    store = graph.store
    bob = remote("$bob", ["$pl"], 4, "m.room.member", BOB, {"membership": "join"})
    topic = remote("$topic", ["$pl"], 4, "m.room.topic", "", {"topic": "t"})
    resolved = {**BASE, ("m.room.topic", ""): "$topic", ("m.room.member", BOB): "$bob"}
    await store.persist_incoming(ROOM, [bob, topic], NOW, current_state=resolved)
    assert await extremities(store) == ["$bob", "$topic"]
    assert await store.get_current_state_ids(ROOM) == resolved
    member = await RoomStore(db).get_membership(ROOM, BOB)
    assert member is not None and member.membership == "join"


async def test_events_out_of_order(db: Database) -> None:
    store = (await new_graph(db)).store
    # The child first: its parent is unknown (a gap), the child is an extremity.
    await store.persist_incoming(ROOM, [remote("$child", ["$parent"], 5)], NOW)
    assert await extremities(store) == ["$child", "$pl"]
    # The parent: not an extremity (it has a child), and its own parent no longer is.
    await store.persist_incoming(ROOM, [remote("$parent", ["$pl"], 4)], NOW)
    assert await extremities(store) == ["$child"]
    # The same events again change nothing.
    assert await store.persist_incoming(ROOM, [remote("$parent", ["$pl"], 4)], NOW) == {}
    assert await extremities(store) == ["$child"]


async def test_outliers_are_stored_apart_until_they_take_their_place(db: Database) -> None:
    store = (await new_graph(db)).store
    outlier = remote("$out", ["$elsewhere"], 9, outlier=True)
    positions = await store.persist_incoming(ROOM, [outlier], NOW)
    assert positions is not None
    assert positions["$out"] < 0
    stored = await store.get_event("$out")
    assert stored is not None and not stored.served
    assert await store.get_prev_event_ids("$out") == []
    assert await store.get_auth_event_ids("$out") == sorted(AUTHS)
    assert await extremities(store) == ["$pl"]
    assert "$out" not in await timeline(store)
    # Later it arrives in the graph: served, with edges, an extremity.
    positions = await store.persist_incoming(ROOM, [remote("$out", ["$pl"], 4)], NOW)
    assert positions is not None
    assert positions["$out"] > 0
    assert await store.get_prev_event_ids("$out") == ["$pl"]
    assert await extremities(store) == ["$out"]
    assert (await timeline(store))[-1] == "$out"


async def test_rejected_events_are_kept_with_their_reason_and_never_served(db: Database) -> None:
    store = (await new_graph(db)).store
    power = remote(
        "$forged",
        ["$pl"],
        4,
        "m.room.power_levels",
        "",
        {"users": {EVE: 100}},
        rejected="sender may not raise their own power level",
    )
    positions = await store.persist_incoming(ROOM, [power], NOW)
    assert positions is not None
    assert positions["$forged"] < 0
    assert await store.get_rejection("$forged") == "sender may not raise their own power level"
    assert await store.get_rejections(["$forged", "$pl"]) == {
        "$forged": "sender may not raise their own power level"
    }
    assert await store.get_rejection("$pl") is None
    stored = await store.get_event("$forged")
    assert stored is not None and not stored.served
    # It changed no state, neither its own nor the room's, and is no extremity.
    assert await store.get_state_ids(stored.state_group) == BASE
    assert await store.get_current_state_ids(ROOM) == BASE
    assert await extremities(store) == ["$pl"]
    assert "$forged" not in await timeline(store)


async def test_soft_failed_events_are_kept_but_neither_served_nor_parents(db: Database) -> None:
    store = (await new_graph(db)).store
    await store.persist_incoming(ROOM, [remote("$soft", ["$pl"], 4, soft_failed=True)], NOW)
    stored = await store.get_event("$soft")
    assert stored is not None and not stored.served
    assert await store.get_prev_event_ids("$soft") == ["$pl"]
    assert await extremities(store) == ["$pl"]
    window = await store.get_window(0, 100)
    assert window is not None and ROOM in window.rooms  # the room's own events
    assert "$soft" not in await timeline(store)
    async with db.read() as conn:
        flags = (
            await conn.execute(sa.select(events.c.soft_failed).where(events.c.event_id == "$soft"))
        ).scalar()
    assert flags is True


async def test_an_event_in_the_graph_needs_its_state(db: Database) -> None:
    store = (await new_graph(db)).store
    event = remote("$r", ["$pl"], 4)
    event = IncomingEvent(event.pdu, event.event_id)
    with pytest.raises(ValueError):
        await store.persist_incoming(ROOM, [event], NOW)
    assert await store.get_event("$r") is None


async def test_unserved_events_never_reach_a_window(db: Database) -> None:
    graph: Graph = await new_graph(db)
    store = graph.store
    before = await store.get_room_events(ROOM, limit=1, descending=True)
    await store.persist_incoming(
        ROOM,
        [
            remote("$o", ["$x"], 4, outlier=True),
            remote("$s", ["$pl"], 4, soft_failed=True),
            remote("$j", ["$pl"], 4, rejected="no"),
        ],
        NOW,
    )
    # Nothing moved on the events stream: a local send still builds on the same token.
    position = await graph.persist(graph.event("$m", "m.room.message", ["$pl"], AUTHS))
    assert position == before[0].stream_ordering + 1
    window = await store.get_window(0, position)
    assert window is not None
    assert [e.event_id for e in window.events_of(ROOM) or ()] == ["$create", "$alice", "$pl", "$m"]


async def test_backward_extremities_follow_the_gaps(db: Database) -> None:
    store = (await new_graph(db)).store
    # An event whose parents we lack (one known only as an outlier): both are gaps.
    assert await store.persist_incoming(ROOM, [remote("$o", ["$pl"], 4, outlier=True)], NOW)
    assert await store.persist_incoming(ROOM, [remote("$x", ["$gap", "$o"], 9)], NOW)
    assert await store.get_backward_extremities(ROOM) == ["$gap", "$o"]
    # The gap's event arrives, on a parent we lack too: the gap moves back.
    assert await store.persist_incoming(ROOM, [remote("$gap", ["$older"], 8)], NOW)
    assert await store.get_backward_extremities(ROOM) == ["$o", "$older"]
    # The outlier takes its place in the graph.
    assert await store.persist_incoming(ROOM, [remote("$o", ["$pl"], 4)], NOW)
    assert await store.get_backward_extremities(ROOM) == ["$older"]
    # Another room has none.
    assert await store.get_backward_extremities("!other:test") == []
