"""The room graph on both databases: forward extremities, prev_events and auth_events edges,
auth chains, and an event built on several extremities with their state resolved."""

from __future__ import annotations

import random
from typing import Any

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, NewEvent, StateMap
from homeserver.storage.rooms import RoomStore
from homeserver.storage.schema import current_state, event_auth, event_edges

ROOM = "!graph:test"
ALICE = "@alice:test"
BOB = "@bob:test"
NOW = 1_700_000_000_000


class Graph:
    """Events of one room with explicit prev_events and auth_events (not checked)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.latest: str | None = None
        self.depths: dict[str, int] = {}

    def event(
        self,
        event_id: str,
        event_type: str,
        prevs: list[str],
        auths: list[str],
        state_key: str | None = None,
        content: dict[str, Any] | None = None,
        **extra: Any,
    ) -> NewEvent:
        pdu: dict[str, Any] = {
            "room_id": ROOM,
            "type": event_type,
            "sender": ALICE,
            "content": content or {},
            "depth": max((self.depths[p] for p in prevs), default=0) + 1,
            "origin_server_ts": NOW + len(self.depths),
            "prev_events": prevs,
            "auth_events": auths,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        return NewEvent(pdu, event_id, ROOM, {}, **extra)

    async def persist(self, event: NewEvent) -> int:
        position = await self.store.persist_event(event, self.latest)
        assert position is not None
        self.latest = event.event_id
        self.depths[event.event_id] = event.pdu["depth"]
        return position

    async def extremities(self) -> list[str]:
        return sorted(e.event_id for e in await self.store.get_forward_extremities(ROOM))


async def new_graph(db: Database) -> Graph:
    assert await RoomStore(db).create_room(ROOM, "11", ALICE, NOW, is_public=False)
    graph = Graph(EventStore(db))
    await graph.persist(graph.event("$create", "m.room.create", [], [], ""))
    join = {"membership": "join"}
    await graph.persist(
        graph.event("$alice", "m.room.member", ["$create"], ["$create"], ALICE, join)
    )
    await graph.persist(
        graph.event("$pl", "m.room.power_levels", ["$alice"], ["$create", "$alice"], "")
    )
    return graph


async def test_a_line_keeps_one_extremity_and_every_edge(db: Database) -> None:
    graph = await new_graph(db)
    assert await graph.extremities() == ["$pl"]
    await graph.persist(graph.event("$m1", "m.room.message", ["$pl"], ["$create", "$alice", "$pl"]))
    await graph.persist(graph.event("$m2", "m.room.message", ["$m1"], ["$create", "$alice", "$pl"]))
    store = graph.store
    assert await graph.extremities() == ["$m2"]
    assert await store.get_prev_event_ids("$m2") == ["$m1"]
    assert await store.get_prev_event_ids("$create") == []
    assert await store.get_auth_event_ids("$m1") == ["$alice", "$create", "$pl"]
    [extremity] = await store.get_forward_extremities(ROOM)
    assert extremity.depth == 5
    room = await RoomStore(db).get_room(ROOM)
    assert room is not None and extremity.state_group == room.current_state_group


async def test_a_lost_compare_and_swap_writes_no_edge(db: Database) -> None:
    graph = await new_graph(db)
    late = graph.event("$late", "m.room.message", ["$alice"], ["$create", "$alice"])
    assert await graph.store.persist_event(late, "$alice") is None
    async with db.read() as conn:
        edges = (await conn.execute(sa.select(event_edges.c.event_id))).scalars().all()
        auth = (await conn.execute(sa.select(event_auth.c.event_id))).scalars().all()
    assert "$late" not in edges and "$late" not in auth
    assert await graph.extremities() == ["$pl"]


async def test_a_fork_and_its_merge(db: Database) -> None:
    graph = await new_graph(db)
    auths = ["$create", "$alice", "$pl"]
    # Two events on the same parent (as two servers would send them): two extremities.
    await graph.persist(graph.event("$a", "m.room.message", ["$pl"], auths))
    await graph.persist(graph.event("$b", "m.room.topic", ["$pl"], auths, "", {"topic": "b"}))
    assert await graph.extremities() == ["$a", "$b"]
    # The deepest first, then the newest.
    graph.depths["$b"] = 4
    merge = graph.event("$merge", "m.room.message", ["$a", "$b"], auths)
    assert merge.pdu["depth"] == 5
    await graph.persist(merge)
    assert await graph.extremities() == ["$merge"]
    assert await graph.store.get_prev_event_ids("$merge") == ["$a", "$b"]
    # An event that names only some of the extremities leaves the others.
    await graph.persist(graph.event("$c", "m.room.message", ["$pl"], auths))
    await graph.persist(graph.event("$d", "m.room.message", ["$merge"], auths))
    assert await graph.extremities() == ["$c", "$d"]


async def test_auth_chains_and_their_difference(db: Database) -> None:
    graph = await new_graph(db)
    store = graph.store
    bob = {"membership": "join"}
    await graph.persist(graph.event("$bob", "m.room.member", ["$pl"], ["$create", "$pl"], BOB, bob))
    await graph.persist(
        graph.event(
            "$topic", "m.room.topic", ["$bob"], ["$create", "$pl", "$alice"], "", {"topic": "t"}
        )
    )
    assert await store.get_auth_chain(["$create"]) == set()
    assert await store.get_auth_chain(["$pl"]) == {"$create", "$alice"}
    assert await store.get_auth_chain(["$bob", "$topic"]) == {"$create", "$alice", "$pl"}
    assert await store.get_auth_chain_difference([["$alice"], ["$bob"]]) == {"$alice", "$pl"}
    assert await store.get_auth_chain_difference([["$pl"], ["$topic"]]) == {"$pl"}
    assert await store.get_auth_chain_difference([]) == set()


async def test_an_event_on_resolved_state_replaces_current_state(db: Database) -> None:
    graph = await new_graph(db)
    store = graph.store
    auths = ["$create", "$alice", "$pl"]
    bob = {"membership": "join"}
    await graph.persist(graph.event("$bob", "m.room.member", ["$pl"], auths, BOB, bob))
    await graph.persist(
        graph.event("$topic", "m.room.topic", ["$pl"], auths, "", {"topic": "one side"})
    )
    assert await graph.extremities() == ["$bob", "$topic"]
    # Say the resolution kept the topic and left Bob out (what a ban racing his join does).
    resolved: StateMap = {
        ("m.room.create", ""): "$create",
        ("m.room.member", ALICE): "$alice",
        ("m.room.power_levels", ""): "$pl",
        ("m.room.topic", ""): "$topic",
    }
    name = graph.event(
        "$name", "m.room.name", ["$bob", "$topic"], auths, "", {"name": "n"}, prev_state=resolved
    )
    await graph.persist(name)
    after = {**resolved, ("m.room.name", ""): "$name"}
    assert await store.get_current_state_ids(ROOM) == after
    stored = await store.get_event("$name")
    assert stored is not None
    assert await store.get_state_ids(stored.state_group) == after
    assert await store.get_state_before(stored) == resolved
    # Bob's membership follows the resolved state: he is no longer in the room.
    bob_now = await RoomStore(db).get_membership(ROOM, BOB)
    assert bob_now is not None and bob_now.membership == "leave"
    joined = await RoomStore(db).get_room_members(ROOM, ["join"])
    assert BOB not in [m.user_id for m in joined]
    assert await graph.extremities() == ["$name"]
    # A message on it keeps the fast path: the room's current state is its state.
    await graph.persist(graph.event("$m", "m.room.message", ["$name"], auths))
    message = await store.get_event("$m")
    assert message is not None and message.state_group == stored.state_group
    async with db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(current_state.c.type).where(current_state.c.room_id == ROOM)
            )
        ).scalars()
        assert sorted(rows) == sorted(t for t, _ in after)


async def test_auth_chains_match_a_walk_of_the_graph_on_random_dags(db: Database) -> None:
    """The recursive queries against a plain walk, on seeded random auth graphs."""
    rng = random.Random(17)
    for dag in range(5):
        ids = [f"$d{dag}e{i}" for i in range(40)]
        parents = {e: rng.sample(ids[:i], min(i, rng.randint(0, 4))) for i, e in enumerate(ids)}
        async with db.write() as conn:
            rows = [{"event_id": e, "auth_id": a} for e, auths in parents.items() for a in auths]
            await conn.execute(sa.insert(event_auth), rows)

        def chain(events: list[str], parents: dict[str, list[str]] = parents) -> set[str]:
            seen: set[str] = set()
            todo = [a for e in events for a in parents[e]]
            while todo:
                a = todo.pop()
                if a not in seen:
                    seen.add(a)
                    todo.extend(parents[a])
            return seen

        store = EventStore(db)
        for _ in range(5):
            sets = [rng.sample(ids, rng.randint(1, 5)) for _ in range(rng.randint(1, 4))]
            assert await store.get_auth_chain(sets[0]) == chain(sets[0])
            chains = [chain(s) for s in sets]
            expected = set().union(*chains) - chains[0].intersection(*chains[1:])
            assert await store.get_auth_chain_difference(sets) == expected
