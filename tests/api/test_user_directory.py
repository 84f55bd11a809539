"""POST /user_directory/search: who may be found, matching, limits, bad bodies."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

V3 = "/_matrix/client/v3"
SEARCH = f"{V3}/user_directory/search"


async def _search(client: httpx.AsyncClient, token: str, term: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(SEARCH, json={"search_term": term, **extra}, headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert_response_matches("POST", SEARCH, 200, r.json())
    body: dict[str, Any] = r.json()
    return body


def _ids(body: dict[str, Any]) -> list[str]:
    return [r["user_id"] for r in body["results"]]


async def _room(client: httpx.AsyncClient, token: str, **body: Any) -> str:
    r = await client.post(f"{V3}/createRoom", json=body, headers=auth_header(token))
    assert r.status_code == 200, r.text
    return str(r.json()["room_id"])


async def _join(client: httpx.AsyncClient, token: str, room_id: str) -> None:
    r = await client.post(f"{V3}/join/{room_id}", json={}, headers=auth_header(token))
    assert r.status_code == 200, r.text


async def _profile(client: httpx.AsyncClient, token: str, user_id: str, **fields: str) -> None:
    for key, value in fields.items():
        r = await client.put(
            f"{V3}/profile/{user_id}/{key}", json={key: value}, headers=auth_header(token)
        )
        assert r.status_code == 200, r.text


async def test_shared_private_room_only_for_members(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    _, c_token = await register(client, "carol")
    await _profile(client, b_token, bob, displayname="Bobby Tables", avatar_url="mxc://test/bobby")
    room_id = await _room(client, a_token, preset="private_chat", invite=[bob])
    # An invite is not a shared room yet.
    assert _ids(await _search(client, a_token, "bobby")) == []
    await _join(client, b_token, room_id)
    body = await _search(client, a_token, "bobby")
    assert body == {
        "limited": False,
        "results": [
            {"user_id": bob, "display_name": "Bobby Tables", "avatar_url": "mxc://test/bobby"}
        ],
    }
    # carol shares no room with bob and bob is in no public room: never found.
    for term in ("bobby", "bob", bob, "tables"):
        assert bob not in _ids(await _search(client, c_token, term))
    # Once bob leaves, alice no longer finds him either.
    r = await client.post(f"{V3}/rooms/{room_id}/leave", json={}, headers=auth_header(b_token))
    assert r.status_code == 200, r.text
    assert bob not in _ids(await _search(client, a_token, "bobby"))


async def test_user_in_no_room_is_not_found(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    loner, _ = await register(client, "loner")
    await _room(client, a_token, preset="public_chat")
    assert _ids(await _search(client, a_token, "loner")) == []
    assert _ids(await _search(client, a_token, loner)) == []


async def test_public_room_members_are_found_by_anyone(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    dave, d_token = await register(client, "dave")
    _, c_token = await register(client, "carol")
    room_id = await _room(client, a_token, preset="public_chat")
    await _join(client, d_token, room_id)
    # carol is in no room at all, yet sees the public room's members.
    assert dave in _ids(await _search(client, c_token, "dave"))
    # The join rule turning to invite hides them again.
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.join_rules/",
        json={"join_rule": "invite"},
        headers=auth_header(a_token),
    )
    assert r.status_code == 200, r.text
    assert _ids(await _search(client, c_token, "dave")) == []


async def test_world_readable_room_members_are_found(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    erin, _ = await register(client, "erin")
    _, c_token = await register(client, "carol")
    await _room(client, a_token, preset="private_chat", invite=[erin])
    room_id = await _room(client, a_token, preset="private_chat")
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.history_visibility/",
        json={"history_visibility": "world_readable"},
        headers=auth_header(a_token),
    )
    assert r.status_code == 200, r.text
    assert "@alice:test" in _ids(await _search(client, c_token, "alice"))
    assert _ids(await _search(client, c_token, "erin")) == []


async def test_matching_is_case_insensitive_by_id_and_name(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    await _profile(client, b_token, bob, displayname="Robert Tables")
    room_id = await _room(client, a_token, preset="public_chat")
    await _join(client, b_token, room_id)
    for term in ("ROBERT", "tables robert", "rob", "@BOB", "bob:test", "  Tab  "):
        assert _ids(await _search(client, a_token, term)) == [bob], term
    for term in ("roberta", "bob smith", "%", "_", "b_b", ""):
        assert bob not in _ids(await _search(client, a_token, term)), term


async def test_limit_and_ranking(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    room_id = await _room(client, a_token, preset="public_chat")
    users = []
    for name in ("user1", "user2", "user3", "xuser"):
        user_id, token = await register(client, name)
        await _join(client, token, room_id)
        users.append(user_id)
    body = await _search(client, a_token, "user")
    # Prefix matches first, then by user ID.
    assert _ids(body) == ["@user1:test", "@user2:test", "@user3:test", "@xuser:test"]
    assert body["limited"] is False
    body = await _search(client, a_token, "user", limit=2)
    assert _ids(body) == ["@user1:test", "@user2:test"] and body["limited"] is True
    body = await _search(client, a_token, "user", limit=4)
    assert len(body["results"]) == 4 and body["limited"] is False


async def test_bad_bodies(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    cases: list[tuple[Any, str]] = [
        ({}, "M_MISSING_PARAM"),
        ({"search_term": 1}, "M_BAD_JSON"),
        ({"search_term": "a", "limit": "10"}, "M_BAD_JSON"),
        ({"search_term": "a", "limit": -1}, "M_BAD_JSON"),
        (["a"], "M_BAD_JSON"),
    ]
    for body, errcode in cases:
        r = await client.post(SEARCH, json=body, headers=auth_header(token))
        assert r.status_code == 400, (body, r.text)
        assert r.json()["errcode"] == errcode, body
    r = await client.post(SEARCH, content=b"nope", headers=auth_header(token))
    assert r.status_code == 400 and r.json()["errcode"] == "M_NOT_JSON"
    r = await client.post(SEARCH, json={"search_term": "a"})
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"
