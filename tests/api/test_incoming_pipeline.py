"""Events from another server through the checks of IncomingEvents, on both databases:
accepted, rejected (auth), soft-failed (current state), missing parents, and a fork that the
next local send merges. The remote server signs with a real ed25519 key that the homeserver's
key ring holds (the ``fed`` fixture)."""

from __future__ import annotations

import httpx

from homeserver.app import Homeserver
from homeserver.rooms.incoming import Outcome
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, checked, register
from tests.helpers import create_room as create
from tests.incoming_helpers import RemoteRoom

V3 = "/_matrix/client/v3"
EVE = "@eve:remote.test"


async def public_room_with_eve(
    client: httpx.AsyncClient, hs: Homeserver, remote: FakeRemote
) -> tuple[RemoteRoom, str]:
    """Alice's public room that Eve of remote.test joined; Alice's token."""
    _, tok = await register(client, "alice")
    room_id = await create(client, tok, preset="public_chat")
    room = RemoteRoom(hs, room_id, remote)
    join, join_id = await room.build("m.room.member", {"membership": "join"}, EVE)
    [received] = await hs.incoming_events.receive(room_id, [join], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED, received
    assert received.event_id == join_id
    return room, tok


async def timeline(client: httpx.AsyncClient, tok: str, room_id: str) -> list[str]:
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        params={"dir": "b", "limit": "50"},
        headers=auth_header(tok),
    )
    return [e["event_id"] for e in checked(r)["chunk"]]


async def test_a_remote_join_and_message_are_accepted_and_served(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    member = await hs.room_store.get_membership(room.room_id, EVE)
    assert member is not None and member.membership == "join"
    message, message_id = await room.build("m.room.message", {"body": "hi"})
    [received] = await hs.incoming_events.receive(room.room_id, [message], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED
    assert (await timeline(client, tok, room.room_id))[0] == message_id
    heads = await hs.event_store.get_forward_extremities(room.room_id)
    assert [e.event_id for e in heads] == [message_id]
    # Again: known, nothing done.
    [again] = await hs.incoming_events.receive(room.room_id, [message], hs.clock.now_ms())
    assert again.outcome is Outcome.KNOWN


async def test_a_forged_power_level_is_rejected(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    room_id = room.room_id
    before = await hs.event_store.get_current_state_ids(room_id)
    pl = await hs.event_store.get_event(before[("m.room.power_levels", "")])
    assert pl is not None
    forged_content = {**pl.content, "users": {**pl.content.get("users", {}), EVE: 100}}
    forged, forged_id = await room.build("m.room.power_levels", forged_content, "")
    [received] = await hs.incoming_events.receive(room_id, [forged], hs.clock.now_ms())
    assert received.outcome is Outcome.REJECTED and received.reason
    assert await hs.event_store.get_rejection(forged_id) == received.reason
    assert await hs.event_store.get_current_state_ids(room_id) == before
    assert forged_id not in await timeline(client, tok, room_id)
    for path in (f"event/{forged_id}", f"context/{forged_id}"):
        r = await client.get(f"{V3}/rooms/{room_id}/{path}", headers=auth_header(tok))
        assert r.status_code == 404, path
    r = await client.get(f"{V3}/sync", headers=auth_header(tok))
    assert forged_id not in str(checked(r))
    # An event citing it as an auth event is rejected too.
    topic, _ = await room.build("m.room.topic", {"topic": "mine"}, "")
    topic["auth_events"] = [*topic["auth_events"], forged_id]
    topic_id = await room.resign(topic)
    [cited] = await hs.incoming_events.receive(room_id, [topic], hs.clock.now_ms())
    assert cited.outcome is Outcome.REJECTED
    assert await hs.event_store.get_rejection(topic_id) is not None
    assert await hs.event_store.get_current_state_ids(room_id) == before


async def test_an_event_allowed_only_in_its_branch_is_soft_failed(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    room_id = room.room_id
    # Built while Eve was joined, received after her ban.
    late, late_id = await room.build("m.room.message", {"body": "late"})
    r = await client.post(
        f"{V3}/rooms/{room_id}/ban", headers=auth_header(tok), json={"user_id": EVE}
    )
    checked(r)
    heads_before = await hs.event_store.get_forward_extremities(room_id)
    state_before = await hs.event_store.get_current_state_ids(room_id)
    [received] = await hs.incoming_events.receive(room_id, [late], hs.clock.now_ms())
    assert received.outcome is Outcome.SOFT_FAILED
    stored = await hs.event_store.get_event(late_id)
    assert stored is not None and not stored.served
    assert await hs.event_store.get_forward_extremities(room_id) == heads_before
    assert await hs.event_store.get_current_state_ids(room_id) == state_before
    assert late_id not in await timeline(client, tok, room_id)
    for path in (f"event/{late_id}", f"context/{late_id}"):
        r = await client.get(f"{V3}/rooms/{room_id}/{path}", headers=auth_header(tok))
        assert r.status_code == 404, path
    r = await client.get(f"{V3}/sync", headers=auth_header(tok))
    assert late_id not in str(checked(r))
    # The next local event does not build on it.
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/t1",
        headers=auth_header(tok),
        json={"msgtype": "m.text", "body": "after"},
    )
    after_id = checked(r)["event_id"]
    assert late_id not in await hs.event_store.get_prev_event_ids(after_id)


async def test_unknown_parents_are_missing_without_a_remote_graph(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    [unsent] = await room.chain(1)
    orphan, orphan_id = await room.build("m.room.message", {"body": "?"}, prevs=[unsent[1]])
    [received] = await hs.incoming_events.receive(room.room_id, [orphan], hs.clock.now_ms())
    assert received.outcome is Outcome.MISSING
    assert await hs.event_store.get_event(orphan_id) is None


async def test_a_remote_fork_is_merged_by_the_next_local_send(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    room_id = room.room_id
    heads = [e.event_id for e in await hs.event_store.get_forward_extremities(room_id)]
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/t1",
        headers=auth_header(tok),
        json={"msgtype": "m.text", "body": "alice"},
    )
    alice_id = checked(r)["event_id"]
    # Eve's server had not seen Alice's message: a fork.
    eve, eve_id = await room.build("m.room.message", {"body": "eve"}, prevs=heads)
    [received] = await hs.incoming_events.receive(room_id, [eve], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED
    extremities = {e.event_id for e in await hs.event_store.get_forward_extremities(room_id)}
    assert extremities == {alice_id, eve_id}
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/t2",
        headers=auth_header(tok),
        json={"msgtype": "m.text", "body": "merge"},
    )
    merged = checked(r)["event_id"]
    assert sorted(await hs.event_store.get_prev_event_ids(merged)) == sorted(extremities)
    heads = [e.event_id for e in await hs.event_store.get_forward_extremities(room_id)]
    assert heads == [merged]
