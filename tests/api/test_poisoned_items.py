"""No single stored item can fail a whole response (homeserver/core/render.py).

Items that no client request can create any more (the JSON limits refuse them) are written
straight to the database, as an older server or another writer could have: an event whose
content is nested 300 deep, a to-device message and account data as deep. Every member still
syncs, initial and incremental, over HTTP and WebSocket; the other readers leave the item out.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import sqlalchemy as sa

from homeserver.app import Homeserver
from homeserver.storage.schema import events
from tests.api.test_websocket_transport import StuckClient, _until
from tests.helpers import auth_header, create_room, register

DEPTH = 300  # orjson cannot encode past 254 levels


def deep() -> dict[str, Any]:
    value: Any = 1
    for _ in range(DEPTH):
        value = [value]
    return {"body": "x", "msgtype": "m.text", "a": value}


async def _poison_event(hs: Homeserver, event_id: str) -> None:
    async with hs.db.read() as conn:
        row = (
            await conn.execute(sa.select(events.c.json).where(events.c.event_id == event_id))
        ).one()
    pdu = orjson.loads(row.json)
    pdu["content"] = deep()
    # The stdlib encoder: orjson would refuse, which is the point.
    import json

    async with hs.db.write() as conn:
        await conn.execute(
            sa.update(events).where(events.c.event_id == event_id).values(json=json.dumps(pdu))
        )


async def _send(client: httpx.AsyncClient, token: str, room: str, txn: str, body: str) -> str:
    r = await client.put(
        f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/{txn}",
        json={"msgtype": "m.text", "body": body},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def _sync(client: httpx.AsyncClient, token: str, since: str | None = None) -> Any:
    params = {"since": since} if since else {}
    r = await client.get("/_matrix/client/v3/sync", params=params, headers=auth_header(token))
    assert r.status_code == 200, r.text
    return r.json()


def _timeline_ids(body: Any, room: str) -> list[str]:
    joined = body.get("rooms", {}).get("join", {}).get(room, {})
    return [e["event_id"] for e in joined.get("timeline", {}).get("events", [])]


async def test_every_member_still_syncs(hs: Homeserver, client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, alice_token, preset="public_chat")
    r = await client.post(f"/_matrix/client/v3/join/{quote(room)}", headers=auth_header(bob_token))
    assert r.status_code == 200
    since = {t: (await _sync(client, t))["next_batch"] for t in (alice_token, bob_token)}

    poisoned = await _send(client, alice_token, room, "t1", "to be poisoned")
    after = await _send(client, alice_token, room, "t2", "after")
    await _poison_event(hs, poisoned)
    whoami = await client.get("/_matrix/client/v3/account/whoami", headers=auth_header(bob_token))
    bob_device = whoami.json()["device_id"]
    await hs.to_device._store.add_messages(
        alice, "DEV", "txn", "m.poison", {bob: {bob_device: {"a": deep()}}}, 0
    )
    await hs.to_device._store.add_messages(
        alice, "DEV", "txn2", "m.fine", {bob: {bob_device: {"ok": 1}}}, 0
    )
    await hs.account_data._store.put(bob, None, "m.poison", deep())
    await hs.account_data._store.put(bob, room, "m.poison", deep())
    await hs.account_data._store.put(bob, None, "m.fine", {"ok": 1})

    for token in (alice_token, bob_token):
        for body in (await _sync(client, token), await _sync(client, token, since[token])):
            ids = _timeline_ids(body, room)
            assert after in ids and poisoned not in ids, ids
            types = [e["type"] for e in body.get("account_data", {}).get("events", [])]
            assert "m.poison" not in types
            if token == bob_token:
                assert "m.fine" in types
                joined = body["rooms"]["join"][room]
                assert all(e["type"] != "m.poison" for e in joined["account_data"]["events"])

    # Bob's to-device: the one that renders is delivered, the other left out.
    body = await _sync(client, bob_token, since[bob_token])
    assert [e["type"] for e in body["to_device"]["events"]] == ["m.fine"]

    h = auth_header(bob_token)
    r = await client.get(f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b", headers=h)
    assert r.status_code == 200, r.text
    ids = [e["event_id"] for e in r.json()["chunk"]]
    assert after in ids and poisoned not in ids
    r = await client.get(
        f"/_matrix/client/v3/rooms/{quote(room)}/context/{quote(after)}", headers=h
    )
    assert r.status_code == 200, r.text
    assert poisoned not in [e["event_id"] for e in r.json()["events_before"]]
    r = await client.get(
        f"/_matrix/client/v3/rooms/{quote(room)}/event/{quote(poisoned)}", headers=h
    )
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await client.get(f"/_matrix/client/v3/rooms/{quote(room)}/event/{quote(after)}", headers=h)
    assert r.status_code == 200
    r = await client.get(
        f"/_matrix/client/v1/rooms/{quote(room)}/relations/{quote(after)}", headers=h
    )
    assert r.status_code == 200, r.text
    r = await client.get(f"/_matrix/client/v3/user/{quote(bob)}/account_data/m.poison", headers=h)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await client.get(
        f"/_matrix/client/v3/user/{quote(bob)}/rooms/{quote(room)}/account_data/m.poison",
        headers=h,
    )
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await client.get("/_matrix/client/v3/notifications", headers=h)
    assert r.status_code == 200, r.text
    assert poisoned not in [n["event"]["event_id"] for n in r.json()["notifications"]]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_websocket_sync_leaves_the_item_out(
    hs: Homeserver, client: httpx.AsyncClient
) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    poisoned = await _send(client, token, room, "t1", "to be poisoned")
    after = await _send(client, token, room, "t2", "after")
    await _poison_event(hs, poisoned)
    peer = StuckClient()
    peer.reading.set()
    task = asyncio.create_task(
        hs.websocket.serve(peer, authorization=f"Bearer {token}", token_in_url=False, query={})
    )
    await _until(lambda: len(peer.sent) >= 2)
    assert [f["type"] for f in peer.sent[:2]] == ["ready", "sync"]
    ids = _timeline_ids(peer.sent[1]["result"] if "result" in peer.sent[1] else peer.sent[1], room)
    assert after in ids and poisoned not in ids
    await peer.incoming.put(None)
    await asyncio.wait_for(task, 30)


async def test_sliding_sync_leaves_the_item_out(hs: Homeserver, client: httpx.AsyncClient) -> None:
    """Sliding sync renders as /sync does: the poisoned event is left out of the timeline,
    the room and the rest of the response are served (HTTP here; WebSocket frames go
    through the same encoder)."""
    from tests.api.sliding_helpers import room_list, sliding

    alice, alice_token = await register(client, "alice")
    room = await create_room(client, alice_token, preset="public_chat")
    before = await _send(client, alice_token, room, "t0", "before")
    poisoned = await _send(client, alice_token, room, "t1", "poisoned")
    after = await _send(client, alice_token, room, "t2", "after")
    await _poison_event(hs, poisoned)
    body = await sliding(client, alice_token, {"lists": {"all": room_list(timeline_limit=5)}})
    timeline = [e["event_id"] for e in body["rooms"][room]["timeline"]]
    assert poisoned not in timeline
    assert before in timeline and after in timeline
