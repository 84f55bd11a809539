"""Local sends on the room graph: a new event points at every forward extremity (at most
MAX_PREV_EVENTS), its depth is one more than theirs, its state is theirs resolved, and two
senders at once never lose an event."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.errors import MatrixError
from homeserver.core.types import JsonDict
from homeserver.events.room_versions import RoomVersion
from homeserver.rooms.sender import MAX_PREV_EVENTS, EventSender, StateResolver
from homeserver.storage.events import NewEvent, StateKey, StateMap
from tests.helpers import auth_header, checked, register
from tests.helpers import create_room as create

V3 = "/_matrix/client/v3"
MESSAGE = {"msgtype": "m.text", "body": "hello"}


async def send(client: httpx.AsyncClient, token: str, room_id: str, txn: str) -> str:
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/{txn}", headers=auth_header(token), json=MESSAGE
    )
    return str(checked(r)["event_id"])


async def extremities(hs: Homeserver, room_id: str) -> list[str]:
    return [e.event_id for e in await hs.event_store.get_forward_extremities(room_id)]


async def fork(
    hs: Homeserver, room_id: str, parent: str, n: int, state: bool = False, ts: int | None = None
) -> list[str]:
    """``n`` events on ``parent`` beside the room's line, as another server's would arrive
    (persisted as they are: the store does not check them)."""
    base = await hs.event_store.get_event(parent)
    assert base is not None
    made = []
    for i in range(n):
        room = await hs.room_store.get_room(room_id)
        assert room is not None
        pdu: JsonDict = {
            "room_id": room_id,
            "type": "m.room.topic" if state else "m.room.message",
            "sender": base.sender,
            "content": {"topic": f"fork {i}"} if state else {"body": f"fork {i}"},
            "depth": base.depth + 1 + i,  # deeper and deeper, to check the order
            "origin_server_ts": base.origin_server_ts + 1 if ts is None else ts,
            "prev_events": [parent],
            "auth_events": base.pdu["auth_events"],
        }
        if state:
            pdu["state_key"] = ""
        event_id = f"$fork{i}-{room_id}"
        position = await hs.event_store.persist_event(
            NewEvent(pdu, event_id, room_id, {}), room.latest_event_id
        )
        assert position is not None
        made.append(event_id)
    return made


async def test_a_send_merges_the_forward_extremities(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    first = await send(client, tok, room_id, "t1")
    [parent] = await hs.event_store.get_prev_event_ids(first)
    forks = await fork(hs, room_id, parent, 2)
    assert sorted(await extremities(hs, room_id)) == sorted([first, *forks])
    # The sender's kept head still says ``first`` alone: the compare-and-swap fails, the room
    # is read again, and the event builds on all three.
    merged = await send(client, tok, room_id, "t2")
    event = await hs.event_store.get_event(merged)
    assert event is not None
    # Deepest first, then newest: the second fork is one deeper than ``first`` and the first.
    assert event.pdu["prev_events"] == [forks[1], forks[0], first]
    deepest = await hs.event_store.get_event(forks[1])
    assert deepest is not None and event.depth == deepest.depth + 1
    assert await extremities(hs, room_id) == [merged]
    # The states were one (messages only): nothing was resolved, the room's state is kept.
    room = await hs.room_store.get_room(room_id)
    assert room is not None and event.state_group == room.current_state_group
    # And the next send is on the line again.
    after = await send(client, tok, room_id, "t3")
    assert await hs.event_store.get_prev_event_ids(after) == [merged]


async def test_at_most_ten_prev_events(client: httpx.AsyncClient, hs: Homeserver) -> None:
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    first = await send(client, tok, room_id, "t1")
    [parent] = await hs.event_store.get_prev_event_ids(first)
    forks = await fork(hs, room_id, parent, MAX_PREV_EVENTS + 1)
    merged = await send(client, tok, room_id, "t2")
    # The deepest ten; the two shallowest (``first`` and the first fork) stay extremities.
    assert await hs.event_store.get_prev_event_ids(merged) == sorted(forks[1:])
    assert sorted(await extremities(hs, room_id)) == sorted([merged, first, forks[0]])
    again = await send(client, tok, room_id, "t3")
    assert sorted(await hs.event_store.get_prev_event_ids(again)) == sorted(
        [merged, first, forks[0]]
    )
    assert await extremities(hs, room_id) == [again]


class RecordingResolver:
    """Stands in for state resolution: the union of the sets, the later winning."""

    def __init__(self) -> None:
        self.calls: list[Sequence[StateMap]] = []

    async def __call__(
        self, version: RoomVersion, state_sets: Sequence[StateMap], get_events: Any
    ) -> dict[StateKey, str]:
        self.calls.append(state_sets)
        loaded: Collection[str] = await get_events([e for s in state_sets for e in s.values()])
        assert set(loaded) == {e for s in state_sets for e in s.values()}
        resolved: dict[StateKey, str] = {}
        for state in state_sets:
            resolved.update(state)
        return resolved


async def test_differing_states_are_resolved(client: httpx.AsyncClient, hs: Homeserver) -> None:
    resolver = RecordingResolver()
    checked_resolver: StateResolver = resolver
    hs.event_sender._resolve = checked_resolver  # what the composition root passes
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    first = await send(client, tok, room_id, "t1")
    [parent] = await hs.event_store.get_prev_event_ids(first)
    [topic] = await fork(hs, room_id, parent, 1, state=True)
    merged = await send(client, tok, room_id, "t2")
    assert len(resolver.calls) == 1 and len(resolver.calls[0]) == 2
    event = await hs.event_store.get_event(merged)
    assert event is not None
    state = await hs.event_store.get_state_ids(event.state_group)
    assert state[("m.room.topic", "")] == topic
    assert await hs.event_store.get_current_state_ids(room_id) == state
    # One extremity again: the next send resolves nothing.
    await send(client, tok, room_id, "t3")
    assert len(resolver.calls) == 1


@pytest.mark.parametrize("fork_is_later", [False, True])
async def test_a_topic_war_across_a_fork_is_resolved_by_the_room_version(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock, fork_is_later: bool
) -> None:
    """The composition root's resolver: two topics by one user on two branches. Their power
    is equal, so state resolution v2.1 orders them by time and the later one wins, whichever
    branch holds it."""
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    first = await send(client, tok, room_id, "t1")
    [parent] = await hs.event_store.get_prev_event_ids(first)
    clock.advance(10_000)
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.topic/",
        headers=auth_header(tok),
        json={"topic": "on the line"},
    )
    line_topic = str(checked(r)["event_id"])
    line_event = await hs.event_store.get_event(line_topic)
    assert line_event is not None
    # The fork's topic was sent just after the line's, or long before it.
    ts = line_event.origin_server_ts + (1 if fork_is_later else -5_000)
    [fork_topic] = await fork(hs, room_id, parent, 1, state=True, ts=ts)
    merged = await send(client, tok, room_id, "t2")
    event = await hs.event_store.get_event(merged)
    assert event is not None and len(event.pdu["prev_events"]) == 2
    state = await hs.event_store.get_current_state_ids(room_id)
    assert state[("m.room.topic", "")] == (fork_topic if fork_is_later else line_topic)


async def test_two_senders_at_once_lose_nothing(client: httpx.AsyncClient, hs: Homeserver) -> None:
    """Two workers' senders (each its own lock and kept heads) on one room."""
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    alice = "@alice:test"
    other = EventSender(
        hs.event_store,
        hs.room_store,
        hs.notifier,
        hs.clock,
        "test",
        hs.signing_key,
        hs.event_sender._push,
    )
    senders = [hs.event_sender, other]
    sent = await asyncio.gather(
        *(
            senders[i % 2].send(room_id, alice, "m.room.message", {"body": str(i)})
            for i in range(20)
        )
    )
    ids = [s.event_id for s in sent]
    assert len(set(ids)) == 20
    found = await hs.event_store.get_events(ids)
    assert set(found) == set(ids)
    # Still a line: each event's one parent is the one before it in the stream.
    ordered = sorted(found.values(), key=lambda e: e.stream_ordering)
    for before, after in zip(ordered, ordered[1:], strict=False):
        assert await hs.event_store.get_prev_event_ids(after.event_id) == [before.event_id]
        assert after.depth == before.depth + 1
    assert await extremities(hs, room_id) == [ordered[-1].event_id]


def _worker(hs: Homeserver) -> EventSender:
    """Another worker's sender on the same database (its own lock, heads and known events)."""
    return EventSender(
        hs.event_store,
        hs.room_store,
        hs.notifier,
        hs.clock,
        "test",
        hs.signing_key,
        hs.event_sender._push,
    )


async def test_another_workers_state_change_is_seen_by_the_next_send(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    """The sender keeps the auth events its last build of the room loaded; another worker's
    event moves the room on, so they are read again and the new power levels apply."""
    _, tok = await register(client, "alice")
    _, bob_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat")
    checked(await client.post(f"{V3}/join/{room_id}", headers=auth_header(bob_tok), json={}))
    alice, bob = "@alice:test", "@bob:test"
    await hs.event_sender.send(room_id, bob, "m.room.message", {"body": "one"})
    power = await hs.event_store.get_current_state_ids(room_id)
    levels = await hs.event_store.get_event(power[("m.room.power_levels", "")])
    assert levels is not None
    content = {**levels.content, "events_default": 50}
    await _worker(hs).send(room_id, alice, "m.room.power_levels", content, state_key="")
    with pytest.raises(MatrixError) as raised:
        await hs.event_sender.send(room_id, bob, "m.room.message", {"body": "two"})
    assert raised.value.to_json()["errcode"] == "M_FORBIDDEN"


async def test_a_redaction_drops_the_known_auth_events(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    """An event never changes but for its redaction: a redaction written on this worker, in
    any room, makes the next build read its auth events again."""
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    other_room = await create(client, tok)
    alice = "@alice:test"
    await hs.event_sender.send(room_id, alice, "m.room.message", {"body": "one"})
    known = hs.event_sender._known_events(hs.event_sender._heads.get(room_id))
    assert len(known) == 3  # create, power levels, alice's membership
    epoch = hs.event_store.redaction_epoch
    target = await hs.event_sender.send(other_room, alice, "m.room.message", {"body": "x"})
    await hs.event_sender.send(other_room, alice, "m.room.redaction", {}, redacts=target.event_id)
    assert hs.event_store.redaction_epoch == epoch + 1
    assert hs.event_sender._known_events(hs.event_sender._heads.get(room_id)) == {}
    assert other_room not in hs.event_sender._known
    # Read again, and kept again.
    await hs.event_sender.send(room_id, alice, "m.room.message", {"body": "two"})
    assert len(hs.event_sender._known_events(hs.event_sender._heads.get(room_id))) == 3
