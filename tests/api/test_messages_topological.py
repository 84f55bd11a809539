"""/messages, /context and /members in topological order (depth, then stream order) on a
room whose stream order differs: events from another server stored late with small depths
(through ``EventStore.persist_incoming``, as the incoming pipeline does). Tokens ``t..``
round-trip, stream tokens ``s..`` (a sync's ``next_batch`` and ``prev_batch``) still work,
bad tokens are 400 M_INVALID_PARAM."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.storage.events import IncomingEvent, StoredEvent
from tests.helpers import auth_header, checked, register
from tests.helpers import create_room as create

V3 = "/_matrix/client/v3"
EVE = "@eve:remote.example"
NOW = 1_700_000_000_000


async def send(hs: Homeserver, user: str, room_id: str, body: str) -> str:
    sent = await hs.event_sender.send(
        room_id, user, "m.room.message", {"msgtype": "m.text", "body": body}
    )
    return sent.event_id


async def late_remote(hs: Homeserver, room_id: str, body: str, prev: str, depth: int) -> str:
    """A message from another server whose parent is the old event ``prev``: stored now (a
    late stream position) with a small depth."""
    state = await hs.event_store.get_current_state_ids(room_id)
    event_id = f"${body}-remote"
    pdu: dict[str, Any] = {
        "room_id": room_id,
        "sender": EVE,
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": body},
        "origin_server_ts": NOW,
        "depth": depth,
        "prev_events": [prev],
        "auth_events": [],
        "hashes": {"sha256": "x"},
        "signatures": {},
    }
    positions = await hs.event_store.persist_incoming(
        room_id, [IncomingEvent(pdu, event_id, state_before=state)], NOW
    )
    assert positions[event_id] > 0
    return event_id


async def get(client: httpx.AsyncClient, token: str, path: str, **params: Any) -> httpx.Response:
    return await client.get(
        path if path.startswith("/_matrix") else f"{V3}{path}",
        headers=auth_header(token),
        params={k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in params.items()},
    )


async def messages(
    client: httpx.AsyncClient, token: str, room_id: str, **params: Any
) -> dict[str, Any]:
    body: dict[str, Any] = checked(await get(client, token, f"/rooms/{room_id}/messages", **params))
    return body


def ids(chunk: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in chunk]


async def topological(hs: Homeserver, room_id: str) -> list[StoredEvent]:
    """Every served event of the room, by (depth, stream ordering), read straight from the
    stream-ordered store and sorted here."""
    found = await hs.event_store.get_room_events(room_id, limit=1000, descending=False)
    return sorted(found, key=lambda e: (e.depth, e.stream_ordering))


async def forked_room(client: httpx.AsyncClient, hs: Homeserver) -> tuple[str, str, str]:
    """A room where stream and topological orders differ: m1..m5 local, then r1 and r2 from
    another server on an early event (small depths, late stream positions), then m6, m7
    local (on both extremities). Returns the user, their token and the room."""
    alice, tok = await register(client, "alice")
    room_id = await create(client, tok, preset="public_chat")
    early = (await hs.event_store.get_room_events(room_id, limit=3, descending=False))[-1]
    for i in range(1, 6):
        await send(hs, alice, room_id, f"m{i}")
    r1 = await late_remote(hs, room_id, "r1", early.event_id, early.depth + 1)
    await late_remote(hs, room_id, "r2", r1, early.depth + 2)
    for i in (6, 7):
        await send(hs, alice, room_id, f"m{i}")
    return alice, tok, room_id


async def test_the_orders_differ_and_messages_follow_the_topological_one(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    _, tok, room_id = await forked_room(client, hs)
    topo = await topological(hs, room_id)
    by_stream = sorted(topo, key=lambda e: e.stream_ordering)
    assert [e.event_id for e in topo] != [e.event_id for e in by_stream]
    expected = [e.event_id for e in topo]

    # Backwards from the end, three at a time, to the start: every event once, in order.
    seen: list[str] = []
    page = await messages(client, tok, room_id, dir="b", limit=3)
    while True:
        seen += ids(page["chunk"])
        if "end" not in page:
            break
        assert page["end"].startswith("t")
        page = await messages(client, tok, room_id, dir="b", limit=3, **{"from": page["end"]})
    assert seen == list(reversed(expected))

    # Forwards from the start, the same events the other way.
    seen = []
    page = await messages(client, tok, room_id, dir="f", limit=4)
    while True:
        seen += ids(page["chunk"])
        if "end" not in page:
            break
        page = await messages(client, tok, room_id, dir="f", limit=4, **{"from": page["end"]})
    assert seen == expected


async def test_tokens_round_trip_both_ways(client: httpx.AsyncClient, hs: Homeserver) -> None:
    _, tok, room_id = await forked_room(client, hs)
    expected = [e.event_id for e in await topological(hs, room_id)]
    first = await messages(client, tok, room_id, dir="b", limit=4)
    second = await messages(client, tok, room_id, dir="b", limit=4, **{"from": first["end"]})
    assert ids(second["chunk"]) == list(reversed(expected))[4:8]
    assert second["start"] == first["end"]
    # Forwards from the gap between the two pages: the first page again, oldest first.
    back = await messages(client, tok, room_id, dir="f", limit=4, **{"from": first["end"]})
    assert ids(back["chunk"]) == list(reversed(ids(first["chunk"])))
    # Backwards from the second page's end to the first page's end: the second page.
    between = await messages(
        client, tok, room_id, dir="b", limit=10, **{"from": first["end"], "to": second["end"]}
    )
    assert ids(between["chunk"]) == ids(second["chunk"])
    # Forwards with `to`: up to and including the event before the gap.
    upto = await messages(
        client, tok, room_id, dir="f", limit=10, **{"from": second["end"], "to": first["end"]}
    )
    assert ids(upto["chunk"]) == list(reversed(ids(second["chunk"])))


async def test_stream_tokens_still_work(client: httpx.AsyncClient, hs: Homeserver) -> None:
    alice, tok = await register(client, "alice")
    room_id = await create(client, tok, preset="public_chat")
    early = (await hs.event_store.get_room_events(room_id, limit=3, descending=False))[-1]
    for i in range(1, 4):
        await send(hs, alice, room_id, f"m{i}")
    synced = checked(await get(client, tok, "/sync"))
    since = synced["next_batch"]
    # After the sync's position: a late event from another server and a local one.
    r1 = await late_remote(hs, room_id, "r1", early.event_id, early.depth + 1)
    m4 = await send(hs, alice, room_id, "m4")
    before = [e.event_id for e in await topological(hs, room_id) if e.event_id not in (r1, m4)]
    # A whole sync token as `from`: the timeline as it was then, in topological order.
    page = await messages(client, tok, room_id, dir="b", limit=50, **{"from": since})
    assert ids(page["chunk"]) == list(reversed(before))
    assert page["start"] == since
    # Its events position alone (`s<n>`, what /messages gave before topological tokens).
    events_position = since.split("_")[0]
    page = await messages(client, tok, room_id, dir="b", limit=2, **{"from": events_position})
    assert ids(page["chunk"]) == list(reversed(before))[:2]
    # Paginating on from there never brings the events after the stream token.
    rest = await messages(client, tok, room_id, dir="b", limit=50, **{"from": page["end"]})
    assert ids(rest["chunk"]) == list(reversed(before))[2:]
    # Forwards from the stream token: what came after it, in topological order.
    after = await messages(client, tok, room_id, dir="f", limit=50, **{"from": since})
    assert ids(after["chunk"]) == [r1, m4]


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
async def test_sync_prev_batch_then_messages_has_no_gap_and_no_duplicate(
    client: httpx.AsyncClient, hs: Homeserver, limit: int
) -> None:
    _, tok, room_id = await forked_room(client, hs)
    everything = {e.event_id for e in await topological(hs, room_id)}
    # The sync's timeline is the last events of the stream: m7, m6, r2, r1 come last.
    sync_filter = {"room": {"timeline": {"limit": 3}}}
    synced = checked(await get(client, tok, "/sync", filter=sync_filter))
    timeline = synced["rooms"]["join"][room_id]["timeline"]
    assert timeline["limited"] is True
    seen = ids(timeline["events"])
    assert any(e.endswith("-remote") for e in seen)  # a late, shallow event among them
    page = await messages(
        client, tok, room_id, dir="b", limit=limit, **{"from": timeline["prev_batch"]}
    )
    while True:
        seen += ids(page["chunk"])
        if "end" not in page:
            break
        page = await messages(client, tok, room_id, dir="b", limit=limit, **{"from": page["end"]})
    assert len(seen) == len(set(seen)), "an event came twice"
    assert set(seen) == everything


async def test_context_pages_topologically(client: httpx.AsyncClient, hs: Homeserver) -> None:
    _, tok, room_id = await forked_room(client, hs)
    expected = [e.event_id for e in await topological(hs, room_id)]
    r1 = "$r1-remote"
    at = expected.index(r1)
    body = checked(await get(client, tok, f"/rooms/{room_id}/context/{r1}", limit=4))
    assert ids(body["events_before"]) == list(reversed(expected[at - 2 : at]))
    assert ids(body["events_after"]) == expected[at + 1 : at + 3]
    assert body["start"].startswith("t") and body["end"].startswith("t")
    # /messages continues from the context's tokens with neither gap nor overlap.
    older = await messages(client, tok, room_id, dir="b", limit=50, **{"from": body["start"]})
    assert ids(older["chunk"]) == list(reversed(expected[: at - 2]))
    newer = await messages(client, tok, room_id, dir="f", limit=50, **{"from": body["end"]})
    assert ids(newer["chunk"]) == expected[at + 3 :]


async def test_members_at_a_topological_token(client: httpx.AsyncClient, hs: Homeserver) -> None:
    alice, tok = await register(client, "alice")
    bob, bob_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat")
    await send(hs, alice, room_id, "before bob")
    page = await messages(client, tok, room_id, dir="b", limit=1)
    checked(await client.post(f"{V3}/rooms/{room_id}/join", headers=auth_header(bob_tok), json={}))
    now = checked(await get(client, tok, f"/rooms/{room_id}/members"))
    assert {e["state_key"] for e in now["chunk"]} == {alice, bob}
    # `end` of a page of one: just before "before bob"; its state has alice only.
    then = checked(await get(client, tok, f"/rooms/{room_id}/members", at=page["end"]))
    assert {e["state_key"] for e in then["chunk"]} == {alice}
    at_start = checked(await get(client, tok, f"/rooms/{room_id}/members", at=page["start"]))
    assert {e["state_key"] for e in at_start["chunk"]} == {alice}


BAD_TOKENS = [
    "t",
    "t1",
    "t1_",
    "t_1",
    "tx_1",
    "t1_2_3_4",
    "t-1_2",
    "t1-2",
    "t1_2_",
    "t99999999999999999999_1",
    "t9223372036854775808_1",
    "t\u00b2_1",
    "t\u0661_1",
    "s",
    "sx",
    "s-1",
    "s\u00b2",
    "s99999999999999999999",
    "s1_2_3_4_5_6_7_8_9_10_11",
    "x1",
    "1",
    "m1~2.3",
]


@pytest.mark.parametrize("token", BAD_TOKENS)
async def test_bad_tokens_are_invalid_params(
    client: httpx.AsyncClient, hs: Homeserver, token: str
) -> None:
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    [create_event] = await hs.event_store.get_room_events(room_id, limit=1, descending=False)
    v1 = f"/_matrix/client/v1/rooms/{room_id}"
    for path, params in (
        (f"/rooms/{room_id}/messages", {"dir": "b", "from": token}),
        (f"/rooms/{room_id}/messages", {"dir": "f", "to": token}),
        (f"/rooms/{room_id}/members", {"at": token}),
        (f"{v1}/threads", {"from": token}),
        (f"{v1}/relations/{create_event.event_id}", {"from": token}),
        (f"{v1}/relations/{create_event.event_id}", {"to": token}),
    ):
        r = await get(client, tok, path, **params)
        assert r.status_code == 400, (path, params, r.text)
        assert r.json()["errcode"] == "M_INVALID_PARAM", r.text


async def test_the_largest_positions_are_tokens(client: httpx.AsyncClient, hs: Homeserver) -> None:
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    big = 2**63 - 1
    page = await messages(client, tok, room_id, dir="b", limit=50, **{"from": f"t{big}_{big}"})
    assert len(page["chunk"]) > 0
    page = await messages(client, tok, room_id, dir="f", limit=50, **{"from": f"t{big}_{big}"})
    assert page["chunk"] == []
    page = await messages(client, tok, room_id, dir="b", limit=50, **{"from": f"s{big}"})
    assert len(page["chunk"]) > 0
