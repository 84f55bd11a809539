"""Events from another server through the checks of IncomingEvents, on both databases:
accepted, rejected (auth), soft-failed (current state), missing parents, and a fork that the
next local send merges."""

from __future__ import annotations

from typing import Any

import httpx

from homeserver.app import Homeserver
from homeserver.events.auth import auth_types_for_event
from homeserver.events.format import add_content_hash, compute_event_id
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.rooms.incoming import IncomingEvents, Outcome
from tests.helpers import auth_header, checked, register
from tests.helpers import create_room as create

V3 = "/_matrix/client/v3"
EVE = "@eve:remote.example"
NOW = 1_700_000_000_000


def pipeline(hs: Homeserver) -> IncomingEvents:
    return IncomingEvents(hs.event_store, hs.room_store, hs.notifier)


async def remote_pdu(
    hs: Homeserver,
    room_id: str,
    event_type: str,
    content: dict[str, Any],
    state_key: str | None = None,
    prevs: list[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """A PDU from Eve's server on the room's current state and extremities (or ``prevs``)."""
    room = await hs.room_store.get_room(room_id)
    assert room is not None
    version = KNOWN_ROOM_VERSIONS[room.room_version]
    state = await hs.event_store.get_current_state_ids(room_id)
    wanted = auth_types_for_event(version, event_type, state_key, EVE, content)
    heads = await hs.event_store.get_forward_extremities(room_id)
    if prevs is None:
        prevs = [e.event_id for e in heads]
    depths = [e.depth for e in (await hs.event_store.get_events(prevs)).values()]
    pdu: dict[str, Any] = {
        "room_id": room_id,
        "sender": EVE,
        "type": event_type,
        "content": content,
        "origin_server_ts": NOW,
        "depth": max(depths, default=0) + 1,
        "prev_events": prevs,
        "auth_events": [state[k] for k in wanted if k in state],
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    add_content_hash(pdu)
    pdu["signatures"] = {}
    return pdu, compute_event_id(pdu, version)


async def public_room_with_eve(client: httpx.AsyncClient, hs: Homeserver) -> tuple[str, str]:
    _, tok = await register(client, "alice")
    room_id = await create(client, tok, preset="public_chat")
    join, join_id = await remote_pdu(hs, room_id, "m.room.member", {"membership": "join"}, EVE)
    [received] = await pipeline(hs).receive(room_id, [join], NOW)
    assert received.outcome is Outcome.ACCEPTED, received
    assert received.event_id == join_id
    return room_id, tok


async def timeline(client: httpx.AsyncClient, tok: str, room_id: str) -> list[str]:
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        params={"dir": "b", "limit": "50"},
        headers=auth_header(tok),
    )
    return [e["event_id"] for e in checked(r)["chunk"]]


async def test_a_remote_join_and_message_are_accepted_and_served(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    room_id, tok = await public_room_with_eve(client, hs)
    member = await hs.room_store.get_membership(room_id, EVE)
    assert member is not None and member.membership == "join"
    message, message_id = await remote_pdu(hs, room_id, "m.room.message", {"body": "hi"})
    [received] = await pipeline(hs).receive(room_id, [message], NOW)
    assert received.outcome is Outcome.ACCEPTED
    assert (await timeline(client, tok, room_id))[0] == message_id
    heads = await hs.event_store.get_forward_extremities(room_id)
    assert [e.event_id for e in heads] == [message_id]
    # Again: known, nothing done.
    [again] = await pipeline(hs).receive(room_id, [message], NOW)
    assert again.outcome is Outcome.KNOWN


async def test_a_forged_power_level_is_rejected(client: httpx.AsyncClient, hs: Homeserver) -> None:
    room_id, tok = await public_room_with_eve(client, hs)
    before = await hs.event_store.get_current_state_ids(room_id)
    pl = await hs.event_store.get_event(before[("m.room.power_levels", "")])
    assert pl is not None
    forged_content = {**pl.content, "users": {**pl.content.get("users", {}), EVE: 100}}
    forged, forged_id = await remote_pdu(hs, room_id, "m.room.power_levels", forged_content, "")
    [received] = await pipeline(hs).receive(room_id, [forged], NOW)
    assert received.outcome is Outcome.REJECTED and received.reason
    assert await hs.event_store.get_rejection(forged_id) == received.reason
    assert await hs.event_store.get_current_state_ids(room_id) == before
    assert forged_id not in await timeline(client, tok, room_id)
    r = await client.get(f"{V3}/rooms/{room_id}/event/{forged_id}", headers=auth_header(tok))
    assert r.status_code == 404
    # An event citing it as an auth event is rejected too.
    topic, _ = await remote_pdu(hs, room_id, "m.room.topic", {"topic": "mine"}, "")
    topic["auth_events"] = [*topic["auth_events"], forged_id]
    room = await hs.room_store.get_room(room_id)
    assert room is not None
    topic_id = compute_event_id(topic, KNOWN_ROOM_VERSIONS[room.room_version])
    [cited] = await pipeline(hs).receive(room_id, [topic], NOW)
    assert cited.outcome is Outcome.REJECTED
    assert await hs.event_store.get_rejection(topic_id) is not None


async def test_an_event_allowed_only_in_its_branch_is_soft_failed(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    room_id, tok = await public_room_with_eve(client, hs)
    # Built while Eve was joined, received after her ban.
    late, late_id = await remote_pdu(hs, room_id, "m.room.message", {"body": "late"})
    r = await client.post(
        f"{V3}/rooms/{room_id}/ban", headers=auth_header(tok), json={"user_id": EVE}
    )
    checked(r)
    heads_before = await hs.event_store.get_forward_extremities(room_id)
    [received] = await pipeline(hs).receive(room_id, [late], NOW)
    assert received.outcome is Outcome.SOFT_FAILED
    stored = await hs.event_store.get_event(late_id)
    assert stored is not None and not stored.served
    assert await hs.event_store.get_forward_extremities(room_id) == heads_before
    assert late_id not in await timeline(client, tok, room_id)


async def test_unknown_parents_are_left_for_federation_to_fetch(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    room_id, _ = await public_room_with_eve(client, hs)
    orphan, orphan_id = await remote_pdu(
        hs, room_id, "m.room.message", {"body": "?"}, prevs=["$unknown"]
    )
    [received] = await pipeline(hs).receive(room_id, [orphan], NOW)
    assert received.outcome is Outcome.MISSING
    assert await hs.event_store.get_event(orphan_id) is None
    # Another room's event is dropped.
    elsewhere, _ = await remote_pdu(hs, room_id, "m.room.message", {"body": "x"})
    elsewhere["room_id"] = "!other:remote.example"
    [dropped] = await pipeline(hs).receive(room_id, [elsewhere], NOW)
    assert dropped.outcome is Outcome.DROPPED


async def test_a_remote_fork_is_merged_by_the_next_local_send(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    room_id, tok = await public_room_with_eve(client, hs)
    heads = [e.event_id for e in await hs.event_store.get_forward_extremities(room_id)]
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/t1",
        headers=auth_header(tok),
        json={"msgtype": "m.text", "body": "alice"},
    )
    alice_id = checked(r)["event_id"]
    # Eve's server had not seen Alice's message: a fork.
    eve, eve_id = await remote_pdu(hs, room_id, "m.room.message", {"body": "eve"}, prevs=heads)
    [received] = await pipeline(hs).receive(room_id, [eve], NOW)
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


async def test_malformed_places_in_the_graph_are_dropped(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    room_id, _ = await public_room_with_eve(client, hs)
    current = await hs.event_store.get_current_state_ids(room_id)
    changes: list[dict[str, Any]] = [
        {"depth": 2**63},
        {"depth": -1},
        {"depth": "3"},
        {"prev_events": []},
        {"prev_events": [f"$p{i}" for i in range(21)]},
    ]
    for change in changes:
        pdu, _ = await remote_pdu(hs, room_id, "m.room.message", {"body": "x"})
        pdu.update(change)
        [received] = await pipeline(hs).receive(room_id, [pdu], NOW)
        assert received.outcome is Outcome.DROPPED, change
    assert await hs.event_store.get_current_state_ids(room_id) == current
