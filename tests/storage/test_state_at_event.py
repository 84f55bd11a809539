"""The state before and after an event (``EventStore.state_ids_at``, federation's /state_ids)
in a room of 10 000 members, on both databases: through chains of state-group deltas and
past a snapshot, for messages, state events, rejected events and outliers."""

from __future__ import annotations

from homeserver.storage.database import Database
from homeserver.storage.events import MAX_STATE_CHAIN, IncomingEvent, StateMap
from tests.storage.test_incoming_events import BASE, NOW, remote
from tests.storage.test_room_graph import ROOM, new_graph

MEMBERS = 10_000


async def test_state_at_events_of_a_ten_thousand_member_room(db: Database) -> None:
    store = (await new_graph(db)).store
    crowd: StateMap = {
        **BASE,
        **{("m.room.member", f"@u{i}:remote"): f"$join{i}" for i in range(MEMBERS)},
    }
    # The crowd's joins are known as outliers; the first event in the graph is sent in it.
    first = remote("$first", ["$pl"], 4, state_before=crowd)
    assert await store.persist_incoming(ROOM, [first], NOW) is not None
    expected_after: dict[str, StateMap] = {"$first": dict(crowd)}
    state = dict(crowd)
    prev, depth = "$first", 5
    # More state events than a chain of deltas holds: one snapshot on the way.
    for i in range(MAX_STATE_CHAIN + 10):
        event_id = f"$leave{i}"
        event = remote(
            event_id,
            [prev],
            depth,
            "m.room.member",
            f"@u{i}:remote",
            {"membership": "leave"},
            state_before=dict(state),
        )
        assert await store.persist_incoming(ROOM, [event], NOW) is not None
        state[("m.room.member", f"@u{i}:remote")] = event_id
        expected_after[event_id] = dict(state)
        prev, depth = event_id, depth + 1
    message = remote("$msg", [prev], depth, state_before=dict(state))
    rejected = remote(
        "$bad",
        [prev],
        depth,
        "m.room.member",
        "@u9999:remote",
        {"membership": "ban"},
        rejected="not allowed",
        state_before=dict(state),
    )
    outlier = IncomingEvent(message.pdu | {"depth": 1}, "$out", outlier=True)
    assert await store.persist_incoming(ROOM, [message, rejected, outlier], NOW) is not None

    at = await store.state_ids_at("$first")
    assert at == (crowd, crowd)
    for i in (0, MAX_STATE_CHAIN - 1, MAX_STATE_CHAIN, MAX_STATE_CHAIN + 9):
        event_id = f"$leave{i}"
        at = await store.state_ids_at(event_id)
        assert at is not None
        before, after = at
        assert after == expected_after[event_id]
        assert before == {**after, ("m.room.member", f"@u{i}:remote"): f"$join{i}"}
    assert await store.state_ids_at("$msg") == (state, state)
    # A rejected event changes nothing; an outlier and an unknown event have no state.
    assert await store.state_ids_at("$bad") == (state, state)
    assert await store.state_ids_at("$out") is None
    assert await store.state_ids_at("$nothing") is None
    # Asked again: the same (from the state-group cache).
    assert await store.state_ids_at("$msg") == (state, state)
    # Whole states evicted: each is rebuilt from an ancestor's (read once) and the deltas
    # since, and stays right.
    store._state_cache.clear()
    for i in range(MAX_STATE_CHAIN + 10):
        at = await store.state_ids_at(f"$leave{i}")
        assert at is not None and at[1] == expected_after[f"$leave{i}"], i
