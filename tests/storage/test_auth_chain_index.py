"""The chain cover index (homeserver/storage/events/chains.py) against the auth chains
computed by walking every auth edge, on random seeded auth graphs: forks of one state key,
several state sets, events stored in order and outliers arriving before their auth events;
the write path on both databases, the in-memory builder the migration uses, and the
migration itself on a database with rooms stored before it."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, IncomingEvent
from homeserver.storage.events.chains import ChainBuilder
from homeserver.storage.events.graph import record_graph
from homeserver.storage.rooms import RoomStore
from homeserver.storage.schema import (
    event_auth,
    event_auth_chain_links,
    event_auth_chain_to_calculate,
    event_auth_chains,
    events,
)
from tests.storage.test_room_dag_migration import fresh_url, upgrade_to  # noqa: F401

Event = tuple[str, str, str, list[str]]  # event ID, type, state key, auth events


@dataclass
class Dag:
    room_id: str
    events: list[Event]  # each after its auth events
    sets: list[list[str]]


def random_dag(seed: int) -> Dag:
    """A room's state events with random auth events, often the latest event of the same
    key (a chain goes on), sometimes an older one (a fork: a chain of its own); and a few
    state sets drawn from them."""
    rng = random.Random(seed)
    keys = [("m.room.power_levels", ""), ("m.room.join_rules", "")] + [
        ("m.room.member", f"@u{i}:test") for i in range(rng.randint(1, 6))
    ]
    create = f"$c{seed}"
    dag = Dag(f"!r{seed}:test", [(create, "m.room.create", "", [])], [])
    of_key: dict[tuple[str, str], list[str]] = {}
    for i in range(rng.randint(3, 40)):
        key = rng.choice(keys)
        pool = [e[0] for e in dag.events]
        auths = set(rng.sample(pool, rng.randint(1, min(4, len(pool)))))
        same = of_key.get(key)
        if same and rng.random() < 0.8:
            auths.add(same[-1] if rng.random() < 0.8 else rng.choice(same))
        event_id = f"$e{seed}_{i}"
        dag.events.append((event_id, key[0], key[1], sorted(auths)))
        of_key.setdefault(key, []).append(event_id)
    ids = [e[0] for e in dag.events]
    for _ in range(rng.randint(1, 4)):
        dag.sets.append(rng.sample(ids, rng.randint(1, min(8, len(ids)))))
    return dag


def walked_chains(edges: dict[str, list[str]], sets: Iterable[Iterable[str]]) -> list[set[str]]:
    """Each set's auth chain by walking the edges (an auth event without edges of its own
    is in the chain, as the recursive query has it)."""
    chains = []
    for s in sets:
        found: set[str] = set()
        todo = [a for e in s for a in edges.get(e, [])]
        while todo:
            e = todo.pop()
            if e not in found:
                found.add(e)
                todo.extend(edges.get(e, []))
        chains.append(found)
    return chains


def difference(chains: list[set[str]]) -> set[str]:
    return set().union(*chains) - chains[0].intersection(*chains[1:])


def event_row(
    room_id: str, event_id: str, event_type: str, state_key: str | None, position: int
) -> dict[str, object]:
    """The columns of an event's row that the index reads (the rest: placeholders)."""
    return {
        "stream_ordering": position,
        "event_id": event_id,
        "room_id": room_id,
        "type": event_type,
        "state_key": state_key,
        "sender": "@u0:test",
        "depth": 1,
        "origin_server_ts": 0,
        "json": "{}",
        "state_group": 0,
    }


async def store_event(db: Database, room_id: str, event: Event, position: int) -> None:
    event_id, event_type, state_key, auths = event
    async with db.write() as conn:
        await conn.execute(
            sa.insert(events).values(
                {**event_row(room_id, event_id, event_type, state_key, position), "outlier": True}
            )
        )
        await record_graph(
            conn,
            room_id,
            event_id,
            [],
            auths,
            link=False,
            extremity=False,
            state=(event_type, state_key),
            waiting=True,
        )


async def count(db: Database, table: sa.Table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar())


async def test_the_index_answers_as_the_walk_in_order_and_out_of_order(db: Database) -> None:
    store = EventStore(db)
    position = 0
    indexed = 0
    for seed in range(80):
        dag = random_dag(seed)
        order = list(dag.events)
        shuffled = seed % 2 == 1  # outliers before their auth events
        if shuffled:
            random.Random(seed).shuffle(order)
        stored: dict[str, list[str]] = {}
        for n, event in enumerate(order):
            position += 1
            await store_event(db, dag.room_id, event, position)
            stored[event[0]] = event[3]
            if shuffled and n == len(order) // 2:
                # Half stored: sets of stored events, some of them unindexed (the fallback).
                sets = [[e for e in s if e in stored] or [event[0]] for s in dag.sets]
                chains = walked_chains(stored, sets)
                assert await store.get_auth_chain_difference(sets) == difference(chains)
                assert await store.get_auth_chain(sets[0]) == chains[0]
        indexed += len(dag.events)
        # Everything stored: every event indexed, nothing waits.
        assert await count(db, event_auth_chains) == indexed
        assert await count(db, event_auth_chain_to_calculate) == 0
        edges = {e[0]: e[3] for e in dag.events}
        chains = walked_chains(edges, dag.sets)
        assert await store.get_auth_chain_difference(dag.sets) == difference(chains), seed
        assert await store.get_auth_chain(dag.sets[0]) == chains[0], seed
        assert (
            await store.get_auth_chain(e[0] for e in dag.events) == walked_chains(edges, [edges])[0]
        )


async def test_an_event_whose_auth_event_never_came_waits_and_reads_fall_back(
    db: Database,
) -> None:
    store = EventStore(db)
    create: Event = ("$create", "m.room.create", "", [])
    orphan: Event = ("$orphan", "m.room.member", "@u:test", ["$create", "$missing"])
    child: Event = ("$child", "m.room.member", "@u:test", ["$create", "$orphan"])
    for n, event in enumerate((create, orphan, child), start=1):
        await store_event(db, "!r:test", event, n)
    assert await count(db, event_auth_chain_to_calculate) == 2
    assert await store.get_auth_chain(["$child"]) == {"$create", "$orphan", "$missing"}
    assert await store.get_auth_chain_difference([["$child"], ["$create"]]) == {
        "$create",
        "$orphan",
        "$missing",
    }
    # Stored again (an outlier becoming a timeline event): its rows rewritten, no conflict.
    for n, event in enumerate((orphan, create), start=4):
        async with db.write() as conn:
            await conn.execute(sa.delete(events).where(events.c.event_id == event[0]))
            await conn.execute(sa.delete(event_auth).where(event_auth.c.event_id == event[0]))
        await store_event(db, "!r:test", event, n)
    assert await count(db, event_auth_chain_to_calculate) == 2
    assert await count(db, event_auth_chains) == 1
    # An unknown event: an empty auth chain, as the walk has it.
    assert await store.get_auth_chain(["$unknown"]) == set()
    assert await store.get_auth_chain_difference([]) == set()


async def test_a_state_event_stored_by_a_local_send_is_indexed(db: Database) -> None:
    from tests.storage.test_room_graph import new_graph

    graph = await new_graph(db)
    await graph.persist(graph.event("$m", "m.room.message", ["$pl"], ["$create", "$alice"]))
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(event_auth_chains))).all()
        links = (await conn.execute(sa.select(event_auth_chain_links))).all()
    # The message is not indexed (no auth chain holds it); the state events are.
    assert {r.event_id for r in rows} == {"$create", "$alice", "$pl"}
    assert len(links) == 2  # $alice -> $create; $pl -> $alice (it reaches $create)
    store = graph.store
    assert await store.get_auth_chain(["$pl"]) == {"$create", "$alice"}
    assert await store.get_auth_chain(["$m"]) == {"$create", "$alice"}  # the walk
    assert await store.get_auth_chain_difference([["$pl"], ["$alice"]]) == {"$alice"}


def reach_of(
    seeds: Iterable[tuple[str, int]], links: dict[str, list[tuple[int, str, int]]]
) -> dict[str, int]:
    """What the reads' query computes, in Python: the highest sequence number each chain is
    reached at by the auth chains of the events at ``seeds`` (an event reaches its own
    chain below it, and through the links from its chain at or below it, further chains)."""
    reached: dict[str, int] = {}
    todo: list[tuple[str, int]] = []
    for chain, seq in seeds:
        reached[chain] = max(reached.get(chain, 0), seq - 1)
        todo.append((chain, seq))
    while todo:
        chain, seq = todo.pop()
        for origin, target, target_seq in links.get(chain, ()):
            if origin <= seq and target_seq > reached.get(target, 0):
                reached[target] = target_seq
                todo.append((target, target_seq))
    return reached


def builder_reach(dag: Dag) -> tuple[list[set[str]], int]:
    builder = ChainBuilder()
    for event_id, event_type, state_key, auths in reversed(dag.events):  # any order
        builder.add(event_id, event_type, state_key, auths)
    places, link_rows, left = builder.rows()
    assert left == []
    links: dict[str, list[tuple[int, str, int]]] = {}
    for r in link_rows:
        links.setdefault(str(r["origin_chain_id"]), []).append(
            (
                int(str(r["origin_sequence_number"])),
                str(r["target_chain_id"]),
                int(str(r["target_sequence_number"])),
            )
        )
    where = {
        str(r["event_id"]): (str(r["chain_id"]), int(str(r["sequence_number"]))) for r in places
    }
    chains = []
    for s in dag.sets:
        reach = reach_of([where[e] for e in s], links)
        chains.append({e for e, (c, n) in where.items() if n <= reach.get(c, 0)})
    return chains, len(link_rows)


def test_the_builder_gives_the_same_chains_on_hundreds_of_graphs() -> None:
    for seed in range(400):
        dag = random_dag(seed)
        edges = {e[0]: e[3] for e in dag.events}
        chains, _ = builder_reach(dag)
        assert chains == walked_chains(edges, dag.sets), seed


async def test_the_migration_indexes_rooms_stored_before_it(fresh_url: str) -> None:  # noqa: F811
    db = Database(fresh_url)
    try:
        await upgrade_to(db, "0031")
        dags = [random_dag(seed) for seed in range(1000, 1010)]
        position = 0
        async with db.write() as conn:
            for dag in dags:
                for event_id, event_type, state_key, auths in dag.events:
                    position += 1
                    await conn.execute(
                        sa.insert(events).values(
                            event_row(dag.room_id, event_id, event_type, state_key, position)
                        )
                    )
                    for a in auths:
                        await conn.execute(
                            sa.insert(event_auth).values(event_id=event_id, auth_id=a)
                        )
            # A message, not indexed; a state event whose auth event never came, waiting.
            for n, (event_id, state_key, auths) in enumerate(
                (("$msg", None, [dags[0].events[0][0]]), ("$lost", "@x:test", ["$nowhere"]))
            ):
                await conn.execute(
                    sa.insert(events).values(
                        event_row(
                            dags[0].room_id, event_id, "m.room.member", state_key, position + 1 + n
                        )
                    )
                )
                await conn.execute(
                    sa.insert(event_auth).values(event_id=event_id, auth_id=auths[0])
                )
        await upgrade_to(db, "0033")
        assert await count(db, event_auth_chains) == sum(len(d.events) for d in dags)
        async with db.read() as conn:
            waiting = (await conn.execute(sa.select(event_auth_chain_to_calculate))).all()
        assert [(w.event_id, w.room_id) for w in waiting] == [("$lost", dags[0].room_id)]
        store = EventStore(db)
        for dag in dags:
            edges = {e[0]: e[3] for e in dag.events}
            chains = walked_chains(edges, dag.sets)
            assert await store.get_auth_chain_difference(dag.sets) == difference(chains)
        # Written after: the write path goes on from the migrated chains.
        dag = dags[0]
        last = dag.events[-1]
        await store_event(db, dag.room_id, ("$next", last[1], last[2], [last[0]]), position + 9)
        edges = {e[0]: e[3] for e in dag.events} | {"$next": [last[0]]}
        assert await store.get_auth_chain(["$next"]) == walked_chains(edges, [["$next"]])[0]
    finally:
        await db.close()


async def test_a_remote_joins_outliers_in_any_order_are_all_indexed(db: Database) -> None:
    """The state and auth chain of a remote join, persisted as outliers in one batch in no
    particular order (``EventStore.persist_incoming``): each waits until its auth events
    are placed, and the difference is then read from the index."""
    store = EventStore(db)
    for seed in range(2000, 2006):
        dag = random_dag(seed)
        assert await RoomStore(db).create_room(dag.room_id, "11", "@u0:test", 0, is_public=False)
        batch = []
        for event_id, event_type, state_key, auths in dag.events:
            pdu = {
                "room_id": dag.room_id,
                "type": event_type,
                "state_key": state_key,
                "sender": "@u0:test",
                "content": {},
                "depth": 1,
                "origin_server_ts": 0,
                "prev_events": [],
                "auth_events": auths,
            }
            batch.append(IncomingEvent(pdu, event_id, outlier=True))
        random.Random(seed).shuffle(batch)
        await store.persist_incoming(dag.room_id, batch, 0)
        assert await count(db, event_auth_chain_to_calculate) == 0
        edges = {e[0]: e[3] for e in dag.events}
        async with db.read() as conn:
            placed = await conn.execute(
                sa.select(sa.func.count())
                .select_from(event_auth_chains)
                .where(event_auth_chains.c.event_id.in_(list(edges)))
            )
            assert placed.scalar() == len(edges)
        chains = walked_chains(edges, dag.sets)
        assert await store.get_auth_chain_difference(dag.sets) == difference(chains), seed
