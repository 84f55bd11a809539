"""Concurrency and state on the inbound path, on both databases: concurrent receives (two
pipelines, as on two workers) and local sends racing them lose no extremity and no state
change; a local send on more than ten extremities keeps every extremity's state; a
membership that state resolution drops is recorded as left; the state before and after an
event, for federation's /state_ids."""

from __future__ import annotations

import asyncio

import httpx

from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.rooms.incoming import IncomingEvents, Outcome
from homeserver.rooms.resolution import resolve_room_state
from tests.api.sliding_helpers import room_list, send, sliding
from tests.api.test_incoming_pipeline import EVE, V3, public_room_with_eve
from tests.federation_helpers import FakeRemote
from tests.helpers import auth_header, checked, register

BOB = "@bob:remote.test"
CAROL = "@carol:test"


def another_worker(hs: Homeserver) -> IncomingEvents:
    """A second pipeline on the same database: its own per-room locks, like a worker's."""
    return IncomingEvents(
        hs.event_store, hs.room_store, hs.notifier, hs.keyring, resolve=resolve_room_state
    )


async def heads_of(hs: Homeserver, room_id: str) -> set[str]:
    return {e.event_id for e in await hs.event_store.get_forward_extremities(room_id)}


async def make_eve_admin(client: httpx.AsyncClient, hs: Homeserver, room_id: str, tok: str) -> None:
    state = await hs.event_store.get_current_state_ids(room_id)
    pl = await hs.event_store.get_event(state[("m.room.power_levels", "")])
    assert pl is not None
    content = {**pl.content, "users": {**pl.content["users"], EVE: 100}}
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.power_levels/", headers=auth_header(tok), json=content
    )
    checked(r)


async def test_concurrent_receives_of_a_fork_keep_every_extremity(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    head = sorted(await heads_of(hs, room.room_id))
    forks = [await room.build("m.room.message", {"body": f"f{i}"}, prevs=head) for i in range(6)]
    workers = [hs.incoming_events, another_worker(hs)]
    results = await asyncio.gather(
        *(
            workers[i % 2].receive(room.room_id, [pdu], hs.clock.now_ms())
            for i, (pdu, _) in enumerate(forks)
        )
    )
    assert all(r.outcome is Outcome.ACCEPTED for [r] in results), results
    assert await heads_of(hs, room.room_id) == {event_id for _, event_id in forks}


async def test_a_local_send_racing_incoming_events_loses_no_state(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    for round_ in range(3):
        head = sorted(await heads_of(hs, room.room_id))
        hs.clock.advance(1000)
        rename, rename_id = await room.build(
            "m.room.member", {"membership": "join", "displayname": f"Eve {round_}"}, EVE, prevs=head
        )

        async def topic(n: int, round_: int = round_) -> str:
            r = await client.put(
                f"{V3}/rooms/{room.room_id}/state/m.room.topic/",
                headers=auth_header(tok),
                json={"topic": f"round {round_} topic {n}"},
            )
            return str(checked(r)["event_id"])

        async def incoming(rename: JsonDict = rename) -> None:
            [received] = await another_worker(hs).receive(room.room_id, [rename], hs.clock.now_ms())
            assert received.outcome is Outcome.ACCEPTED, received

        topics = await asyncio.gather(topic(0), incoming(), topic(1))
        sent = await hs.event_store.get_events([topics[0], topics[2]])
        last_topic = max(sent.values(), key=lambda e: e.stream_ordering).event_id
        state = await hs.event_store.get_current_state_ids(room.room_id)
        assert state[("m.room.member", EVE)] == rename_id
        assert state[("m.room.topic", "")] == last_topic
        member = await hs.room_store.get_membership(room.room_id, EVE)
        assert member is not None and member.displayname == f"Eve {round_}"
        # Eve's event is an extremity, or a later one cites it.
        heads = await heads_of(hs, room.room_id)
        if rename_id not in heads:
            cited = [await hs.event_store.get_prev_event_ids(h) for h in heads]
            assert any(rename_id in prevs for prevs in cited)
        # Every extremity is a served event no other cites.
        for h in heads:
            stored = await hs.event_store.get_event(h)
            assert stored is not None and stored.served


async def test_a_send_on_more_than_ten_extremities_keeps_all_their_states(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    await make_eve_admin(client, hs, room.room_id, tok)
    head = sorted(await heads_of(hs, room.room_id))
    keys = [f"k{i}" for i in range(12)]
    for key in keys:
        pdu, _ = await room.build("org.example.part", {"key": key}, key, prevs=head)
        [received] = await hs.incoming_events.receive(room.room_id, [pdu], hs.clock.now_ms())
        assert received.outcome is Outcome.ACCEPTED, received
    assert len(await heads_of(hs, room.room_id)) == 12

    async def parts() -> set[str]:
        state = await hs.event_store.get_current_state_ids(room.room_id)
        return {k for (t, k) in state if t == "org.example.part"}

    assert await parts() == set(keys)
    r = await client.put(
        f"{V3}/rooms/{room.room_id}/send/m.room.message/t1",
        headers=auth_header(tok),
        json={"msgtype": "m.text", "body": "on ten of twelve"},
    )
    first = checked(r)["event_id"]
    assert len(await hs.event_store.get_prev_event_ids(first)) == 10
    assert len(await heads_of(hs, room.room_id)) == 3
    # The two it did not cite still count for the room's state.
    assert await parts() == set(keys)
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/state/org.example.part/k0", headers=auth_header(tok)
    )
    assert checked(r) == {"key": "k0"}
    r = await client.put(
        f"{V3}/rooms/{room.room_id}/send/m.room.message/t2",
        headers=auth_header(tok),
        json={"msgtype": "m.text", "body": "merge"},
    )
    merged = checked(r)["event_id"]
    assert await heads_of(hs, room.room_id) == {merged}
    assert await parts() == set(keys)


async def test_a_membership_dropped_by_state_resolution_is_left(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    await make_eve_admin(client, hs, room.room_id, tok)
    head = sorted(await heads_of(hs, room.room_id))
    hs.clock.advance(1000)
    join, join_id = await room.build("m.room.member", {"membership": "join"}, BOB, sender=BOB)
    [received] = await hs.incoming_events.receive(room.room_id, [join], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED, received
    bob = await hs.room_store.get_membership(room.room_id, BOB)
    assert bob is not None and bob.membership == "join"
    # Eve's server closed the room before it saw Bob's join: in the merged state, his join
    # fails the invite-only rule and is dropped.
    hs.clock.advance(1000)
    close, _ = await room.build("m.room.join_rules", {"join_rule": "invite"}, "", prevs=head)
    [received] = await hs.incoming_events.receive(room.room_id, [close], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED, received
    state = await hs.event_store.get_current_state_ids(room.room_id)
    assert ("m.room.member", BOB) not in state
    bob = await hs.room_store.get_membership(room.room_id, BOB)
    assert bob is not None and bob.membership == "leave"
    r = await client.get(f"{V3}/rooms/{room.room_id}/joined_members", headers=auth_header(tok))
    assert BOB not in checked(r)["joined"]
    assert join_id not in state.values()


async def test_state_before_and_after_an_event(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    message, message_id = await room.build("m.room.message", {"body": "hi"})
    rename, rename_id = await room.build(
        "m.room.member", {"membership": "join", "displayname": "Evie"}, EVE, prevs=[message_id]
    )
    state = await hs.event_store.get_current_state_ids(room.room_id)
    pl = await hs.event_store.get_event(state[("m.room.power_levels", "")])
    assert pl is not None
    forged, forged_id = await room.build(
        "m.room.power_levels",
        {**pl.content, "users": {**pl.content["users"], EVE: 100}},
        "",
        prevs=[rename_id],
    )
    results = await hs.incoming_events.receive(
        room.room_id, [message, rename, forged], hs.clock.now_ms()
    )
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.REJECTED]
    at_message = await hs.incoming_events.state_ids_at(message_id)
    assert at_message == (state, state)
    at_rename = await hs.incoming_events.state_ids_at(rename_id)
    assert at_rename is not None
    assert at_rename[0] == state
    assert at_rename[1] == {**state, ("m.room.member", EVE): rename_id}
    # A rejected event changes no state.
    at_forged = await hs.incoming_events.state_ids_at(forged_id)
    assert at_forged == (at_rename[1], at_rename[1])
    assert await hs.incoming_events.state_ids_at("$unknown") is None


async def test_a_local_user_whose_join_resolution_drops_sees_the_room_left(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    """Carol (ours) joins; Eve's server had closed the room on a branch that did not see
    her join. In the merged state Carol is out: /sync moves the room to `leave` (once),
    sliding sync drops it after showing it once, and she reads nothing sent after."""
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    await make_eve_admin(client, hs, room.room_id, tok)
    head = sorted(await heads_of(hs, room.room_id))
    _, carol_tok = await register(client, "carol")
    r = await client.post(f"{V3}/rooms/{room.room_id}/join", headers=auth_header(carol_tok))
    checked(r)
    await send(client, carol_tok, room.room_id, "hello")
    r = await client.get(f"{V3}/sync", headers=auth_header(carol_tok))
    since = checked(r)["next_batch"]
    assert room.room_id in r.json()["rooms"]["join"]
    request = {"lists": {"all": room_list(timeline_limit=5)}}
    first = await sliding(client, carol_tok, request)
    assert first["lists"]["all"]["ops"][0]["room_ids"] == [room.room_id]

    hs.clock.advance(1000)
    close, _ = await room.build("m.room.join_rules", {"join_rule": "invite"}, "", prevs=head)
    [received] = await hs.incoming_events.receive(room.room_id, [close], hs.clock.now_ms())
    assert received.outcome is Outcome.ACCEPTED, received
    state = await hs.event_store.get_current_state_ids(room.room_id)
    assert ("m.room.member", CAROL) not in state
    after_close = await send(client, tok, room.room_id, "after")

    r = await client.get(f"{V3}/sync", params={"since": since}, headers=auth_header(carol_tok))
    body = checked(r)
    assert room.room_id not in body.get("rooms", {}).get("join", {})
    assert room.room_id in body["rooms"]["leave"]
    left_ids = [e["event_id"] for e in body["rooms"]["leave"][room.room_id]["timeline"]["events"]]
    assert after_close not in left_ids
    r = await client.get(
        f"{V3}/sync", params={"since": body["next_batch"]}, headers=auth_header(carol_tok)
    )
    assert room.room_id not in checked(r).get("rooms", {}).get("leave", {})
    # From scratch: not joined; with include_leave, left.
    r = await client.get(f"{V3}/sync", headers=auth_header(carol_tok))
    assert room.room_id not in checked(r).get("rooms", {}).get("join", {})

    second = await sliding(client, carol_tok, request, pos=first["pos"])
    # Shown once more, up to where she was dropped, so that the client learns of it.
    timeline = second["rooms"][room.room_id].get("timeline", [])
    assert after_close not in [e["event_id"] for e in timeline]
    third = await sliding(client, carol_tok, request, pos=second["pos"])
    assert third["lists"]["all"]["count"] == 0
    assert room.room_id not in third.get("rooms", {})
    fresh = await sliding(client, carol_tok, request)
    assert fresh["lists"]["all"]["count"] == 0

    # New events are not hers to read, nor can she send.
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/event/{after_close}", headers=auth_header(carol_tok)
    )
    assert r.status_code == 404, r.text
    r = await client.get(
        f"{V3}/rooms/{room.room_id}/messages",
        params={"dir": "b", "limit": "20"},
        headers=auth_header(carol_tok),
    )
    assert after_close not in [e["event_id"] for e in checked(r)["chunk"]]
    r = await client.put(
        f"{V3}/rooms/{room.room_id}/send/m.room.message/late",
        json={"msgtype": "m.text", "body": "late"},
        headers=auth_header(carol_tok),
    )
    assert r.status_code == 403, r.text
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(carol_tok))
    assert room.room_id not in checked(r)["joined_rooms"]
