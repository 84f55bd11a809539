"""The delivery path end to end in-process: create, invite, join, send, sync."""

from __future__ import annotations

import httpx

from tests.helpers import auth_header, register


async def test_create_invite_join_send_sync(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    r = await client.post(
        "/_matrix/client/v3/createRoom",
        headers=auth_header(a_tok),
        json={"name": "Tea", "invite": [bob], "preset": "private_chat"},
    )
    assert r.status_code == 200, r.text
    room_id = r.json()["room_id"]
    r = await client.get("/_matrix/client/v3/sync", headers=auth_header(b_tok))
    assert r.status_code == 200, r.text
    assert room_id in r.json()["rooms"]["invite"]
    since = r.json()["next_batch"]
    r = await client.post(f"/_matrix/client/v3/join/{room_id}", headers=auth_header(b_tok), json={})
    assert r.status_code == 200, r.text
    r = await client.put(
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
        headers=auth_header(a_tok),
        json={"msgtype": "m.text", "body": "hi"},
    )
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    r = await client.get(
        "/_matrix/client/v3/sync",
        params={"since": since, "timeout": "1000"},
        headers=auth_header(b_tok),
    )
    assert r.status_code == 200, r.text
    timeline = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
    assert [e["event_id"] for e in timeline][-1] == event_id
    assert alice
