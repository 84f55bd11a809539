"""Events whose parents or auth events we lack, completed through the sender's RemoteGraph
(a second copy of the room, built by the test: no HTTP), on both databases: a short gap
filled by get_missing_events, a long one bridged with the state at its far end (backward
extremities recorded), auth events fetched as outliers, and a remote that cannot answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.rooms import incoming
from homeserver.rooms.incoming import MISSING_EVENTS_LIMIT, Outcome
from tests.api.sliding_helpers import send
from tests.api.test_incoming_pipeline import EVE, public_room_with_eve, timeline
from tests.federation_helpers import FakeRemote
from tests.incoming_helpers import RemoteRoom


async def test_a_short_gap_is_filled_with_the_missing_events(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    built = await room.chain(4)
    [received] = await hs.incoming_events.receive(
        room.room_id, [built[-1][0]], hs.clock.now_ms(), remote=room
    )
    assert received.outcome is Outcome.ACCEPTED, received
    assert room.calls == ["get_missing_events"]
    ids = [event_id for _, event_id in built]
    assert (await timeline(client, tok, room.room_id))[:4] == ids[::-1]
    heads = await hs.event_store.get_forward_extremities(room.room_id)
    assert [e.event_id for e in heads] == [ids[-1]]
    assert await hs.event_store.get_backward_extremities(room.room_id) == []


async def test_a_long_gap_is_bridged_with_the_state_at_its_far_end(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    head = [e.event_id for e in await hs.event_store.get_forward_extremities(room.room_id)]
    hs.clock.advance(1000)
    rename, rename_id = await room.build(
        "m.room.member", {"membership": "join", "displayname": "Evie"}, EVE
    )
    built = await room.chain(MISSING_EVENTS_LIMIT + 4, prevs=[rename_id])
    ids = [event_id for _, event_id in built]
    [received] = await hs.incoming_events.receive(
        room.room_id, [built[-1][0]], hs.clock.now_ms(), remote=room
    )
    assert received.outcome is Outcome.ACCEPTED, received
    # The last ten before it came by get_missing_events; before them, a gap.
    served = ids[-MISSING_EVENTS_LIMIT - 1 :]
    far_end = ids[-MISSING_EVENTS_LIMIT - 2]
    assert (await timeline(client, tok, room.room_id))[: len(served)] == served[::-1]
    assert await hs.event_store.get_backward_extremities(room.room_id) == [far_end]
    for outlier in (far_end, rename_id):
        stored = await hs.event_store.get_event(outlier)
        assert stored is not None and not stored.served
    assert "get_state_ids" in room.calls
    # The state came from the far end: Eve's new name, which we hold as an outlier.
    at = await hs.event_store.state_ids_at(ids[-1])
    assert at is not None
    assert at[0][("m.room.member", EVE)] == rename_id
    # The room has two forward extremities now (ours, which the gap does not reach, and
    # the new one); their states resolve to Eve's new name.
    heads = {e.event_id for e in await hs.event_store.get_forward_extremities(room.room_id)}
    assert heads == {*head, ids[-1]}
    state = await hs.event_store.get_current_state_ids(room.room_id)
    assert state[("m.room.member", EVE)] == rename_id
    member = await hs.room_store.get_membership(room.room_id, EVE)
    assert member is not None and member.displayname == "Evie"
    # The far end arrives later (backfill): it takes its place, and the gap moves back.
    far_pdu = room.pdus[far_end]
    [filled] = await hs.incoming_events.receive(
        room.room_id, [far_pdu], hs.clock.now_ms(), remote=room
    )
    assert filled.outcome is Outcome.ACCEPTED, filled
    assert far_end not in await hs.event_store.get_backward_extremities(room.room_id)


async def test_unknown_auth_events_are_fetched_as_outliers(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    head = [e.event_id for e in await hs.event_store.get_forward_extremities(room.room_id)]
    rename, rename_id = await room.build(
        "m.room.member", {"membership": "join", "displayname": "Evie"}, EVE
    )
    # A message citing the rename as its auth event, on our head.
    message, message_id = await room.build("m.room.message", {"body": "hi"}, prevs=head)
    joined = (await hs.event_store.get_current_state_ids(room.room_id))[("m.room.member", EVE)]
    message["auth_events"] = [rename_id if a == joined else a for a in message["auth_events"]]
    message_id = await room.resign(message)
    [received] = await hs.incoming_events.receive(
        room.room_id, [message], hs.clock.now_ms(), remote=room
    )
    assert received.outcome is Outcome.ACCEPTED, (
        received,
        await hs.event_store.get_rejection(rename_id),
    )
    assert room.calls == ["get_events"]
    stored = await hs.event_store.get_event(rename_id)
    assert stored is not None and not stored.served
    assert await hs.event_store.get_rejection(rename_id) is None
    assert await hs.event_store.get_auth_event_ids(message_id) == sorted(message["auth_events"])


async def test_a_remote_that_cannot_answer_leaves_the_event_missing(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    state = await hs.event_store.get_current_state_ids(room.room_id)
    built = await room.chain(3)
    room.unreachable = True
    [received] = await hs.incoming_events.receive(
        room.room_id, [built[-1][0]], hs.clock.now_ms(), remote=room
    )
    assert received.outcome is Outcome.MISSING
    assert room.calls == ["get_missing_events", "get_state_ids"]
    assert await hs.event_store.get_event(built[-1][1]) is None
    assert await hs.event_store.get_current_state_ids(room.room_id) == state
    # A remote that gives other events than those asked for gives nothing.
    room.unreachable = False
    room.calls.clear()

    async def wrong(room_id: str, event_ids: object) -> list[dict[str, object]]:
        return [built[0][0]]

    room.get_events = wrong  # type: ignore[method-assign]
    orphan, orphan_id = await room.build("m.room.message", {"body": "?"}, prevs=[built[1][1]])
    room.pdus.pop(built[1][1])  # not among the missing events either
    [received] = await hs.incoming_events.receive(
        room.room_id, [orphan], hs.clock.now_ms(), remote=room
    )
    assert received.outcome is Outcome.MISSING
    assert await hs.event_store.get_event(built[0][1]) is None
    assert await hs.event_store.get_event(orphan_id) is None


class ParkedRemote(RemoteRoom):
    """A remote whose get_missing_events waits until the test lets it answer."""

    def __init__(self, room: RemoteRoom) -> None:
        super().__init__(room.hs, room.room_id, room.remote)
        self.pdus = room.pdus
        self._before = room._before
        self._after = room._after
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def get_missing_events(
        self,
        room_id: str,
        earliest: Sequence[str],
        latest: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> Sequence[JsonDict]:
        self.entered.set()
        await self.release.wait()
        return await super().get_missing_events(room_id, earliest, latest, limit, min_depth)


async def test_a_slow_remote_holds_up_neither_local_sends_nor_other_events_of_the_room(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    """While the remote is asked for the events of a gap (parked by the test), a local send
    and another event of the same room complete; then the gap is filled on the graph as it
    is then (three forward extremities merged by nothing yet: both new branches and ours)."""
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    built = await room.chain(3)
    parked = ParkedRemote(room)
    gapped = asyncio.create_task(
        hs.incoming_events.receive(room.room_id, [built[-1][0]], hs.clock.now_ms(), remote=parked)
    )
    try:
        await asyncio.wait_for(parked.entered.wait(), 30)
        local = await asyncio.wait_for(send(client, tok, room.room_id, "meanwhile"), 30)
        other, other_id = await room.build("m.room.message", {"body": "other"}, prevs=[local])
        [received] = await asyncio.wait_for(
            hs.incoming_events.receive(room.room_id, [other], hs.clock.now_ms()), 30
        )
        assert received.outcome is Outcome.ACCEPTED, received
        assert not gapped.done()
    finally:
        parked.release.set()
    [filled] = await asyncio.wait_for(gapped, 30)
    assert filled.outcome is Outcome.ACCEPTED, filled
    ids = [event_id for _, event_id in built]
    heads = {e.event_id for e in await hs.event_store.get_forward_extremities(room.room_id)}
    assert heads == {other_id, ids[-1]}
    served = await timeline(client, tok, room.room_id)
    assert {local, other_id, *ids} <= set(served)
    # The next local send merges both branches.
    merged = await send(client, tok, room.room_id, "merged")
    stored = await hs.event_store.get_event(merged)
    assert stored is not None
    assert set(stored.pdu["prev_events"]) == {other_id, ids[-1]}


async def test_a_state_larger_than_the_fetch_bound_leaves_the_event_missing(
    fed: tuple[Homeserver, httpx.AsyncClient],
    remote: FakeRemote,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gap longer than get_missing_events gives is bridged with the state at its far end
    (above); a state (with its auth chain) of more events than MAX_FETCHED_EVENTS is not
    fetched event by event: the event stays missing and nothing is stored."""
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    state = await hs.event_store.get_current_state_ids(room.room_id)
    built = await room.chain(MISSING_EVENTS_LIMIT + 4)
    monkeypatch.setattr(incoming, "MAX_FETCHED_EVENTS", len(state) - 1)
    [received] = await hs.incoming_events.receive(
        room.room_id, [built[-1][0]], hs.clock.now_ms(), remote=room
    )
    assert received.outcome is Outcome.MISSING, received
    # Asked for the state (for each event of the gap that came), never for its events.
    assert set(room.calls) == {"get_missing_events", "get_state_ids"}
    assert await hs.event_store.get_event(built[-1][1]) is None
    assert await hs.event_store.get_current_state_ids(room.room_id) == state
