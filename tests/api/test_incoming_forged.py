"""Forged and malformed events from another server (issue 17's list), on both databases:
each is dropped, rejected or stored redacted as the spec says, none answers with an error,
and none changes the room's current state or forward extremities (except the redacted one,
which is a valid event)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.types import JsonDict
from homeserver.events.format import sign_event
from homeserver.rooms.incoming import Outcome, Received
from tests.api.test_incoming_pipeline import EVE, V3, public_room_with_eve, timeline
from tests.federation_helpers import DAY_MS, FakeRemote
from tests.helpers import auth_header, checked
from tests.helpers import create_room as create
from tests.incoming_helpers import RemoteRoom


async def unchanged_by(hs: Homeserver, room: RemoteRoom, pdu: JsonDict) -> Received:
    """Receives ``pdu`` and checks that the room's state and extremities did not move."""
    state = await hs.event_store.get_current_state_ids(room.room_id)
    heads = await hs.event_store.get_forward_extremities(room.room_id)
    received = await receive(hs, room, pdu)
    assert await hs.event_store.get_current_state_ids(room.room_id) == state
    assert await hs.event_store.get_forward_extremities(room.room_id) == heads
    return received


async def receive(hs: Homeserver, room: RemoteRoom, pdu: JsonDict) -> Received:
    [received] = await hs.incoming_events.receive(
        room.room_id, [pdu], hs.clock.now_ms(), remote=room
    )
    return received


async def test_a_bad_or_missing_signature_is_dropped(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    # Signed by a key of the same name that the server does not publish.
    impostor = RemoteRoom(hs, room.room_id, FakeRemote("remote.test"))
    forged, forged_id = await impostor.build("m.room.name", {"name": "pwned"}, "")
    received = await unchanged_by(hs, room, forged)
    assert received.outcome is Outcome.DROPPED
    assert await hs.event_store.get_event(forged_id) is None
    # A valid signature over other content: the signature covers the redacted form,
    # which a changed type or state key changes.
    signed, _ = await room.build("m.room.message", {"body": "hi"})
    signed["type"] = "m.room.name"
    signed["state_key"] = ""
    received = await unchanged_by(hs, room, signed)
    assert received.outcome is Outcome.DROPPED
    unsigned, _ = await room.build("m.room.message", {"body": "hi"}, sign=False)
    received = await unchanged_by(hs, room, unsigned)
    assert received.outcome is Outcome.DROPPED


async def test_a_sender_of_another_server_than_the_signer_is_dropped(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    # remote.test signs an event of a user of our server, and of an unknown server.
    for sender in ("@alice:test", "@mallory:elsewhere.test"):
        pdu, event_id = await room.build("m.room.message", {"body": "as you"}, sender=sender)
        received = await unchanged_by(hs, room, pdu)
        assert received.outcome is Outcome.DROPPED, sender
        assert await hs.event_store.get_event(event_id) is None


async def test_an_event_of_another_room_is_dropped(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    pdu, _ = await room.build("m.room.message", {"body": "x"})
    pdu["room_id"] = "!" + "A" * 43
    await room.resign(pdu)
    received = await unchanged_by(hs, room, pdu)
    assert received.outcome is Outcome.DROPPED


async def test_auth_events_from_another_room_reject_the_event(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    other = await create(client, tok, preset="public_chat")
    other_state = await hs.event_store.get_current_state_ids(other)
    # Eve's join of the other room does not exist here: she cites Alice's power levels
    # there, which name no one from remote.test but would pass a careless check.
    pdu, event_id = await room.build("m.room.message", {"body": "x"})
    pdu["auth_events"] = [
        *[a for a in pdu["auth_events"] if a != pdu["auth_events"][0]],
        other_state[("m.room.power_levels", "")],
    ]
    event_id = await room.resign(pdu)
    received = await unchanged_by(hs, room, pdu)
    assert received.outcome is Outcome.REJECTED
    assert await hs.event_store.get_rejection(event_id) is not None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"depth": 2**63}, "out of range"),
        ({"depth": 2**53}, "out of range"),
        ({"depth": -1}, "depth"),
        ({"depth": "3"}, "depth"),
        ({"origin_server_ts": 2**63}, "out of range"),
        ({"content": {"body": "x", "n": 2**53}}, "out of range"),
        ({"content": {"body": "x", "n": -(2**53)}}, "out of range"),
        ({"content": {"body": "x", "n": 1.5}}, "Floats"),
        ({"prev_events": []}, "no prev_events"),
        ({"prev_events": [f"$p{i}" for i in range(21)]}, "more than 20"),
        ({"auth_events": [f"$a{i}" for i in range(11)]}, "more than 10"),
        ({"prev_events": "$p"}, "not a list"),
        ({"content": "text"}, "content"),
        ({"sender": "not a user"}, "sender"),
        ({"content": {"body": "x" * 70_000}}, "larger"),
    ],
)
async def test_malformed_pdus_are_dropped(
    fed: tuple[Homeserver, httpx.AsyncClient],
    remote: FakeRemote,
    change: dict[str, Any],
    why: str,
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    before = len(await timeline(client, tok, room.room_id))
    pdu, _ = await room.build("m.room.message", {"body": "x"})
    pdu.update(change)
    try:
        await room.resign(pdu)
    except (ValueError, TypeError):
        pass  # not even hashable: sent as it is
    received = await unchanged_by(hs, room, pdu)
    assert received.outcome is Outcome.DROPPED, received
    assert received.reason is not None and why in received.reason, received.reason
    assert len(await timeline(client, tok, room.room_id)) == before


async def test_a_content_hash_mismatch_is_stored_redacted(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    pdu, _ = await room.build("m.room.message", {"body": "signed"})
    pdu["content"] = {"body": "swapped in transit"}
    # The signature covers the redacted form and the hash: it still verifies.
    event_id = await room.resign(pdu, rehash=False)
    received = await receive(hs, room, pdu)
    assert received.outcome is Outcome.ACCEPTED, received
    assert received.event_id == event_id
    stored = await hs.event_store.get_event(event_id)
    assert stored is not None and stored.content == {}
    r = await client.get(f"{V3}/rooms/{room.room_id}/event/{event_id}", headers=auth_header(tok))
    assert checked(r)["content"] == {}
    assert "swapped" not in str(checked(await client.get(f"{V3}/sync", headers=auth_header(tok))))
    # A membership keeps what the auth rules need: the redacted join still counts.
    member, _ = await room.build("m.room.member", {"membership": "join", "displayname": "Eve"}, EVE)
    member["content"] = {"membership": "join", "displayname": "Mallory"}
    member_id = await room.resign(member, rehash=False)
    assert (await receive(hs, room, member)).outcome is Outcome.ACCEPTED
    state = await hs.event_store.get_current_state_ids(room.room_id)
    assert state[("m.room.member", EVE)] == member_id
    now = await hs.room_store.get_membership(room.room_id, EVE)
    assert now is not None and now.membership == "join" and now.displayname is None


async def test_a_forged_power_level_deep_in_an_auth_chain_is_rejected(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, tok = await public_room_with_eve(client, hs, remote)
    state = await hs.event_store.get_current_state_ids(room.room_id)
    pl = await hs.event_store.get_event(state[("m.room.power_levels", "")])
    assert pl is not None
    # Eve's server makes her an admin in an event it never sends, then cites it.
    forged, forged_id = await room.build(
        "m.room.power_levels", {**pl.content, "users": {**pl.content["users"], EVE: 100}}, ""
    )
    topic, topic_id = await room.build("m.room.topic", {"topic": "mine now"}, "")
    topic["auth_events"] = [
        *[a for a in topic["auth_events"] if a != pl.event_id],
        forged_id,
    ]
    topic_id = await room.resign(topic)
    received = await unchanged_by(hs, room, topic)
    assert received.outcome is Outcome.REJECTED, received
    # The forged event was fetched, checked as an outlier and rejected.
    assert "get_events" in room.calls
    assert await hs.event_store.get_rejection(forged_id) is not None
    assert await hs.event_store.get_rejection(topic_id) is not None
    stored = await hs.event_store.get_event(forged_id)
    assert stored is not None and not stored.served
    for event_id in (forged_id, topic_id):
        r = await client.get(
            f"{V3}/rooms/{room.room_id}/event/{event_id}", headers=auth_header(tok)
        )
        assert r.status_code == 404


async def test_junk_in_place_of_pdus_is_dropped(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    state = await hs.event_store.get_current_state_ids(room.room_id)
    junk: list[Any] = ["$event", 5, None, [], {}, {"type": 1}, {"signatures": "x"}]
    results = await hs.incoming_events.receive(room.room_id, junk, hs.clock.now_ms(), room)
    assert [r.outcome for r in results] == [Outcome.DROPPED] * len(junk)
    assert await hs.event_store.get_current_state_ids(room.room_id) == state
    assert room.calls == []


async def test_a_restricted_join_needs_its_authorising_servers_signature(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    bob = "@bob:remote.test"
    content = {"membership": "join", "join_authorised_via_users_server": "@alice:test"}
    join, join_id = await room.build("m.room.member", content, bob, sender=bob)
    # Signed by remote.test only: our server, which it names as authoriser, did not sign.
    received = await unchanged_by(hs, room, join)
    assert received.outcome is Outcome.DROPPED
    assert received.reason is not None and received.reason.endswith("signed by test")
    assert await hs.event_store.get_event(join_id) is None
    # With the authoriser's signature too, it is checked on (and the public room lets him in).
    version = await room.version()
    sign_event(join, hs.config.server_name, hs.signing_key, version)
    assert (await receive(hs, room, join)).outcome is Outcome.ACCEPTED
    member = await hs.room_store.get_membership(room.room_id, bob)
    assert member is not None and member.membership == "join"


async def test_a_key_that_expired_before_the_event_was_sent_does_not_count(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    hs, client = fed
    room, _ = await public_room_with_eve(client, hs, remote)
    # The key ring holds remote.test's key valid for a day from now (the fixture): an event
    # claiming to be sent two days on is not validly signed (room versions 5 and later).
    late, late_id = await room.build(
        "m.room.message", {"body": "later"}, ts=hs.clock.now_ms() + 2 * DAY_MS
    )
    received = await unchanged_by(hs, room, late)
    assert received.outcome is Outcome.DROPPED
    assert await hs.event_store.get_event(late_id) is None
