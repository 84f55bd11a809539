"""GET /messages and /context: pagination, tokens, filters, history visibility."""

from __future__ import annotations

import json
from typing import Any

import httpx

from homeserver.app import Homeserver
from tests.helpers import auth_header, checked, register
from tests.helpers import create_room as create

V3 = "/_matrix/client/v3"


async def join(client: httpx.AsyncClient, token: str, room_id: str) -> None:
    checked(await client.post(f"{V3}/rooms/{room_id}/join", headers=auth_header(token), json={}))


async def send(client: httpx.AsyncClient, token: str, room_id: str, body: str) -> str:
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/{body}",
        headers=auth_header(token),
        json={"msgtype": "m.text", "body": body},
    )
    return str(checked(r)["event_id"])


async def messages(
    client: httpx.AsyncClient, token: str, room_id: str, **params: Any
) -> dict[str, Any]:
    if isinstance(params.get("filter"), dict):
        params["filter"] = json.dumps(params["filter"])
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        headers=auth_header(token),
        params={k: str(v) for k, v in params.items()},
    )
    body: dict[str, Any] = checked(r)
    return body


def bodies(chunk: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in chunk if e["type"] == "m.room.message"]


async def test_paginate_500_messages_back_from_sync(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    alice, tok = await register(client, "alice")
    room_id = await create(client, tok, preset="private_chat")
    sent = [f"m{i:03}" for i in range(500)]
    # Through the service the send route calls: the same events, without 500 HTTP round trips.
    for body in sent:
        await hs.event_sender.send(
            room_id, alice, "m.room.message", {"msgtype": "m.text", "body": body}
        )
    r = await client.get(
        f"{V3}/sync",
        headers=auth_header(tok),
        params={"filter": json.dumps({"room": {"timeline": {"limit": 5}}})},
    )
    timeline = r.json()["rooms"]["join"][room_id]["timeline"]
    assert timeline["limited"] is True
    assert bodies(timeline["events"]) == sent[-5:]
    seen = bodies(timeline["events"])
    token = timeline["prev_batch"]
    pages = 0
    creation: list[str] = []
    while True:
        page = await messages(client, tok, room_id, dir="b", limit=50, **{"from": token})
        assert page["start"] == token
        assert len(page["chunk"]) <= 50
        seen[:0] = reversed(bodies(page["chunk"]))
        creation += [e["type"] for e in page["chunk"] if e["type"] != "m.room.message"]
        pages += 1
        if "end" not in page:
            break
        assert page["end"] != token
        token = page["end"]
        assert pages < 20
    assert seen == sent  # every message, exactly once, in order
    assert "m.room.create" in creation and creation[-1] == "m.room.create"
    assert pages >= 10


async def test_forward_pagination_and_to(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    r = await client.get(f"{V3}/sync", headers=auth_header(tok))
    before = r.json()["next_batch"]
    sent = [await send(client, tok, room_id, f"m{i}") for i in range(7)]
    r = await client.get(f"{V3}/sync", headers=auth_header(tok))
    after = r.json()["next_batch"]
    # Forward from a sync token, three at a time.
    seen: list[str] = []
    token = before
    while True:
        page = await messages(client, tok, room_id, dir="f", limit=3, **{"from": token})
        assert len(page["chunk"]) <= 3
        seen += [e["event_id"] for e in page["chunk"]]
        if "end" not in page:
            break
        token = page["end"]
    assert seen == sent
    # Backward from after to before: exactly the seven, newest first.
    page = await messages(client, tok, room_id, dir="b", limit=50, to=before, **{"from": after})
    assert [e["event_id"] for e in page["chunk"]] == sent[::-1]
    # Forward from before to the fourth message's end.
    page = await messages(client, tok, room_id, dir="b", limit=3, **{"from": after})
    middle = page["end"]  # just before the fifth message
    page = await messages(client, tok, room_id, dir="f", limit=50, to=middle, **{"from": before})
    assert [e["event_id"] for e in page["chunk"]] == sent[:4]
    # Without `from`: backwards from the end of the room, forwards from its start.
    page = await messages(client, tok, room_id, dir="b", limit=2)
    assert [e["event_id"] for e in page["chunk"]] == sent[:-3:-1]
    page = await messages(client, tok, room_id, dir="f", limit=1)
    assert page["chunk"][0]["type"] == "m.room.create"
    # Default direction is backwards? The spec makes dir required; a bad one is refused.
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages", params={"dir": "x"}, headers=auth_header(tok)
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        headers=auth_header(tok),
        params={"dir": "b", "from": "garbage"},
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        headers=auth_header(tok),
        params={"dir": "b", "limit": "x"},
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        headers=auth_header(tok),
        params={"dir": "b", "filter": "{nope"},
    )
    assert r.status_code == 400 and r.json()["errcode"] in ("M_BAD_JSON", "M_NOT_JSON")
    # limit=0: no events.
    page = await messages(client, tok, room_id, dir="b", limit=0)
    assert page["chunk"] == []


async def test_filters(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    room_id = await create(client, tok, preset="public_chat")
    await join(client, b_tok, room_id)
    await join(client, c_tok, room_id)
    await send(client, b_tok, room_id, "from-bob")
    r = await client.put(
        f"{V3}/rooms/{room_id}/send/org.example.ping/p1", headers=auth_header(tok), json={"n": 1}
    )
    checked(r)
    await send(client, tok, room_id, "from-alice")
    page = await messages(client, tok, room_id, dir="b", filter={"types": ["m.room.message"]})
    assert bodies(page["chunk"]) == ["from-alice", "from-bob"]
    assert {e["type"] for e in page["chunk"]} == {"m.room.message"}
    page = await messages(
        client,
        tok,
        room_id,
        dir="b",
        limit=100,
        filter={"not_types": ["m.room.message", "m.room.member"]},
    )
    types = {e["type"] for e in page["chunk"]}
    assert "org.example.ping" in types and not types & {"m.room.message", "m.room.member"}
    page = await messages(client, tok, room_id, dir="b", filter={"types": ["org.example.*"]})
    assert [e["type"] for e in page["chunk"]] == ["org.example.ping"]
    page = await messages(
        client, tok, room_id, dir="b", filter={"senders": [bob], "types": ["m.room.message"]}
    )
    assert bodies(page["chunk"]) == ["from-bob"]
    # lazy_load_members: the senders' member events come in `state`.
    page = await messages(
        client,
        tok,
        room_id,
        dir="b",
        filter={"types": ["m.room.message"], "lazy_load_members": True},
    )
    state = page["state"]
    assert all(e["type"] == "m.room.member" for e in state)
    assert {e["state_key"] for e in state} == {alice, bob}
    assert carol not in {e["state_key"] for e in state}
    # The filter's limit caps the page.
    page = await messages(client, tok, room_id, dir="b", limit=10, filter={"limit": 1})
    assert len(page["chunk"]) == 1


async def test_left_user_sees_nothing_after_leaving(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat")
    await join(client, b_tok, room_id)
    await send(client, tok, room_id, "before")
    checked(await client.post(f"{V3}/rooms/{room_id}/leave", headers=auth_header(b_tok), json={}))
    await send(client, tok, room_id, "after")
    page = await messages(client, b_tok, room_id, dir="b", limit=50)
    assert bodies(page["chunk"]) == ["before"]
    assert page["chunk"][0]["type"] == "m.room.member"  # his own leave is the newest
    page = await messages(client, b_tok, room_id, dir="f", limit=50)
    assert bodies(page["chunk"]) == ["before"]
    r = await client.get(f"{V3}/sync", headers=auth_header(tok))
    latest = r.json()["next_batch"]
    page = await messages(client, b_tok, room_id, dir="b", limit=50, **{"from": latest})
    assert bodies(page["chunk"]) == ["before"]
    # A stranger to the room: 403.
    _, c_tok = await register(client, "carol")
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages", params={"dir": "b"}, headers=auth_header(c_tok)
    )
    checked(r, 403, "M_FORBIDDEN", documented=False)  # the spec gives this 403 no body
    r = await client.get(
        f"{V3}/rooms/!nowhere:test/messages", params={"dir": "b"}, headers=auth_header(c_tok)
    )
    checked(r, 403, "M_FORBIDDEN", documented=False)


async def test_history_visibility_joined_and_shared(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    for visibility, visible_before in (("joined", False), ("shared", True)):
        room_id = await create(
            client,
            tok,
            preset="public_chat",
            initial_state=[
                {"type": "m.room.history_visibility", "content": {"history_visibility": visibility}}
            ],
        )
        await send(client, tok, room_id, f"{visibility}-before")
        await join(client, b_tok, room_id)
        await send(client, tok, room_id, f"{visibility}-after")
        page = await messages(client, b_tok, room_id, dir="b", limit=50)
        expected = [f"{visibility}-after"] + ([f"{visibility}-before"] if visible_before else [])
        assert bodies(page["chunk"]) == expected, visibility
        page = await messages(client, b_tok, room_id, dir="f", limit=50)
        assert bodies(page["chunk"]) == expected[::-1], visibility
        # /event and /context agree with /messages.
        before_id = [
            e
            for e in (await messages(client, tok, room_id, dir="b"))["chunk"]
            if e["content"].get("body") == f"{visibility}-before"
        ][0]["event_id"]
        r = await client.get(f"{V3}/rooms/{room_id}/event/{before_id}", headers=auth_header(b_tok))
        assert r.status_code == (200 if visible_before else 404), r.text
        r = await client.get(
            f"{V3}/rooms/{room_id}/context/{before_id}", headers=auth_header(b_tok)
        )
        assert r.status_code == (200 if visible_before else 404), r.text


async def test_context(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat", name="Ctx")
    await join(client, b_tok, room_id)
    ids = [await send(client, tok if i % 2 else b_tok, room_id, f"c{i}") for i in range(10)]
    r = await client.get(
        f"{V3}/rooms/{room_id}/context/{ids[5]}", params={"limit": "4"}, headers=auth_header(tok)
    )
    body = checked(r)
    assert body["event"]["event_id"] == ids[5]
    assert [e["event_id"] for e in body["events_before"]] == [ids[4], ids[3]]
    assert [e["event_id"] for e in body["events_after"]] == [ids[6], ids[7]]
    state = {(e["type"], e["state_key"]): e for e in body["state"]}
    assert state[("m.room.name", "")]["content"] == {"name": "Ctx"}
    assert {alice, bob} <= {k for t, k in state if t == "m.room.member"}
    # The tokens continue where the context stops.
    page = await messages(client, tok, room_id, dir="b", limit=2, **{"from": body["start"]})
    assert [e["event_id"] for e in page["chunk"]] == [ids[2], ids[1]]
    page = await messages(client, tok, room_id, dir="f", limit=2, **{"from": body["end"]})
    assert [e["event_id"] for e in page["chunk"]] == [ids[8], ids[9]]
    # limit=0: only the event; the end of the room: nothing after.
    r = await client.get(
        f"{V3}/rooms/{room_id}/context/{ids[9]}", params={"limit": "0"}, headers=auth_header(tok)
    )
    body = checked(r)
    assert body["event"]["event_id"] == ids[9]
    assert body["events_before"] == [] and body["events_after"] == []
    r = await client.get(
        f"{V3}/rooms/{room_id}/context/{ids[9]}", params={"limit": "6"}, headers=auth_header(tok)
    )
    body = checked(r)
    assert [e["event_id"] for e in body["events_before"]] == ids[8:5:-1]
    assert body["events_after"] == []
    # A filter applies to before/after/state, not to the event itself.
    r = await client.get(
        f"{V3}/rooms/{room_id}/context/{ids[5]}",
        headers=auth_header(tok),
        params={"limit": "4", "filter": json.dumps({"senders": [bob], "lazy_load_members": True})},
    )
    body = checked(r)
    assert body["event"]["event_id"] == ids[5]
    assert all(e["sender"] == bob for e in body["events_before"] + body["events_after"])
    members = {e["state_key"] for e in body["state"] if e["type"] == "m.room.member"}
    assert bob in members
    # Unknown event, another room's event, a stranger.
    r = await client.get(f"{V3}/rooms/{room_id}/context/$nope", headers=auth_header(tok))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    other = await create(client, tok)
    elsewhere = await send(client, tok, other, "x")
    r = await client.get(f"{V3}/rooms/{room_id}/context/{elsewhere}", headers=auth_header(tok))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    _, c_tok = await register(client, "carol")
    r = await client.get(f"{V3}/rooms/{room_id}/context/{ids[5]}", headers=auth_header(c_tok))
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await client.get(
        f"{V3}/rooms/{room_id}/context/{ids[5]}", headers=auth_header(tok), params={"limit": "-1"}
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_the_history_visibility_event_is_seen_by_the_setting_before_or_after_it(
    client: httpx.AsyncClient,
) -> None:
    """spec, history visibility: a m.room.history_visibility event is visible to whoever the
    setting before it or the one after it lets see it: a non-member peeking into a room made
    world-readable sees that change and what followed, nothing before."""
    _, tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat")
    await send(client, tok, room_id, "private")
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.history_visibility/",
        json={"history_visibility": "world_readable"},
        headers=auth_header(tok),
    )
    checked(r)
    await send(client, tok, room_id, "public")
    page = await messages(client, b_tok, room_id, dir="b", limit=50)
    seen = [
        e["content"].get("history_visibility") or e["content"].get("body") for e in page["chunk"]
    ]
    assert seen == ["public", "world_readable"]
