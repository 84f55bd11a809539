"""Room summaries (MSC3266, spec v1.15 GET /room_summary/{roomIdOrAlias})."""

from __future__ import annotations

from urllib.parse import quote

import httpx

from tests.api.sliding_helpers import post
from tests.helpers import auth_header, create_room, register

SUMMARY = "/_matrix/client/v1/room_summary/"


async def _summary(
    client: httpx.AsyncClient, room: str, token: str | None, status: int = 200
) -> dict[str, object]:
    headers = auth_header(token) if token else {}
    r = await client.get(SUMMARY + quote(room), headers=headers)
    assert r.status_code == status, r.text
    body: dict[str, object] = r.json()
    return body


async def test_member_sees_the_summary(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(
        client,
        token,
        name="Kitchen",
        topic="tea",
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ],
    )
    body = await _summary(client, room, token)
    assert body["room_id"] == room
    assert body["name"] == "Kitchen" and body["topic"] == "tea"
    assert body["num_joined_members"] == 1
    assert body["membership"] == "join"
    assert body["join_rule"] == "invite"
    assert body["encryption"] == "m.megolm.v1.aes-sha2"
    assert body["world_readable"] is False
    assert body["guest_can_join"] is True  # the private_chat preset lets guests join
    assert isinstance(body["room_version"], str)
    assert "room_type" not in body


async def test_public_room_by_alias_without_authentication(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    space = await create_room(
        client,
        token,
        preset="public_chat",
        room_alias_name="hall",
        creation_content={"type": "m.space"},
    )
    body = await _summary(client, "#hall:test", None)
    assert body["room_id"] == space
    assert body["canonical_alias"] == "#hall:test"
    assert body["join_rule"] == "public"
    assert body["room_type"] == "m.space"
    assert "membership" not in body
    # The unstable paths of MSC3266 answer the same.
    for path in (
        f"/_matrix/client/unstable/im.nheko.summary/summary/{quote('#hall:test')}",
        f"/_matrix/client/unstable/im.nheko.summary/rooms/{space}/summary",
    ):
        r = await client.get(path)
        assert r.status_code == 200 and r.json()["room_id"] == space, r.text


async def test_private_room_is_not_found_for_outsiders(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    _, eve_token = await register(client, "eve")
    room = await create_room(client, token, invite=[bob])
    for who in (eve_token, None):
        body = await _summary(client, room, who, 404)
        assert body["errcode"] == "M_NOT_FOUND"
    invited = await _summary(client, room, bob_token)
    assert invited["membership"] == "invite"
    await post(client, bob_token, f"/join/{room}", {})
    assert (await _summary(client, room, bob_token))["num_joined_members"] == 2


async def test_bad_requests(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    for room, status, errcode in (
        ("!unknown:test", 404, "M_NOT_FOUND"),
        ("#nowhere:test", 404, "M_NOT_FOUND"),
        ("kitchen", 400, "M_INVALID_PARAM"),
        ("#", 400, "M_INVALID_PARAM"),
    ):
        body = await _summary(client, room, token, status)
        assert body["errcode"] == errcode, (room, body)
    r = await client.get(SUMMARY + "!a:test", headers=auth_header("nope"))
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
