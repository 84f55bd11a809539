"""MSC4222 (spec v1.16): /sync's use_state_after and state_after."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.sliding_helpers import post, put, send
from tests.helpers import auth_header, create_room, register

SYNC = "/_matrix/client/v3/sync"


async def _sync(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    r = await client.get(
        SYNC, params={k: str(v) for k, v in params.items()}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _keys(section: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in section["events"]}


async def test_initial_state_after_holds_all_state(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token, name="Kitchen")
    body = await _sync(client, token, use_state_after="true")
    entry = body["rooms"]["join"][room]
    assert "state" not in entry
    # Timeline events too: the client applies state_after only, never the timeline's.
    keys = _keys(entry["state_after"])
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.power_levels", "")} <= keys


async def test_incremental_state_after_is_the_change_up_to_the_timeline_end(
    client: httpx.AsyncClient,
) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token, name="Old")
    since = (await _sync(client, token, use_state_after="true"))["next_batch"]
    await send(client, token, room, "plain")
    body = await _sync(client, token, since=since, use_state_after="true")
    assert body["rooms"]["join"][room]["state_after"] == {"events": []}
    since = body["next_batch"]
    await put(client, token, f"/rooms/{room}/state/m.room.name/", {"name": "New"})
    body = await _sync(client, token, since=since, use_state_after="true")
    entry = body["rooms"]["join"][room]
    assert [e["content"] for e in entry["state_after"]["events"]] == [{"name": "New"}]
    assert [e["type"] for e in entry["timeline"]["events"]] == ["m.room.name"]
    # Without the parameter: the old shape, the name only in the timeline.
    plain = await _sync(client, token, since=since)
    assert plain["rooms"]["join"][room]["state"] == {"events": []}
    assert "state_after" not in plain["rooms"]["join"][room]


async def test_state_after_across_a_gap(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, token, invite=[bob])
    since = (await _sync(client, token))["next_batch"]
    await post(client, bob_token, f"/join/{room}", {})
    for i in range(3):
        await send(client, token, room, f"m{i}")
    body = await _sync(
        client,
        token,
        since=since,
        use_state_after="true",
        filter='{"room": {"timeline": {"limit": 2}}}',
    )
    entry = body["rooms"]["join"][room]
    assert entry["timeline"]["limited"] is True
    assert ("m.room.member", bob) in _keys(entry["state_after"])


async def test_unstable_name(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    body = await _sync(client, token, **{"org.matrix.msc4222.use_state_after": "true"})
    entry = body["rooms"]["join"][room]
    assert "org.matrix.msc4222.state_after" in entry and "state" not in entry
    r = await client.get("/_matrix/client/versions")
    assert r.json()["unstable_features"]["org.matrix.msc4222"] is True


async def test_bad_parameter(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    r = await client.get(SYNC, params={"use_state_after": "yes"}, headers=auth_header(token))
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
