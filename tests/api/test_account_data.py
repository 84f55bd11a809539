"""Account data (global and per room), room tags, m.direct and m.ignored_user_list."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

V3 = "/_matrix/client/v3"


async def _sync(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    r = await client.get(
        f"{V3}/sync", params={k: str(v) for k, v in params.items()}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


async def _room(client: httpx.AsyncClient, token: str, **body: Any) -> str:
    r = await client.post(f"{V3}/createRoom", json=body, headers=auth_header(token))
    assert r.status_code == 200, r.text
    return str(r.json()["room_id"])


async def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert_response_matches(
        response.request.method, response.request.url.raw_path.decode(), 200, response.json()
    )
    body: dict[str, Any] = response.json()
    return body


def _error(response: httpx.Response, status: int, errcode: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["errcode"] == errcode


def _global(body: dict[str, Any]) -> dict[str, Any]:
    # m.push_rules comes in every initial sync (tests/api/test_pushrules.py checks it).
    return {
        e["type"]: e["content"]
        for e in body.get("account_data", {}).get("events", [])
        if e["type"] != "m.push_rules"
    }


def _room_data(body: dict[str, Any], room_id: str) -> dict[str, Any]:
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return {e["type"]: e["content"] for e in room.get("account_data", {}).get("events", [])}


# --- global account data -----------------------------------------------------------------


async def test_global_round_trip(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    url = f"{V3}/user/{alice}/account_data/org.example.config"
    _error(await client.get(url, headers=auth_header(token)), 404, "M_NOT_FOUND")
    await _ok(await client.put(url, json={"theme": "dark", "n": 1}, headers=auth_header(token)))
    assert await _ok(await client.get(url, headers=auth_header(token))) == {"theme": "dark", "n": 1}
    await _ok(await client.put(url, json={"theme": "light"}, headers=auth_header(token)))
    assert await _ok(await client.get(url, headers=auth_header(token))) == {"theme": "light"}


async def test_type_with_slash(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    url = f"{V3}/user/{alice}/account_data/org.example%2Fslash"
    await _ok(await client.put(url, json={"a": 1}, headers=auth_header(token)))
    assert (await client.get(url, headers=auth_header(token))).json() == {"a": 1}
    assert _global(await _sync(client, token))["org.example/slash"] == {"a": 1}


async def test_other_users_data_is_forbidden(client: httpx.AsyncClient) -> None:
    alice, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    url = f"{V3}/user/{alice}/account_data/org.example.config"
    await _ok(await client.put(url, json={"secret": 1}, headers=auth_header(a_token)))
    _error(await client.get(url, headers=auth_header(b_token)), 403, "M_FORBIDDEN")
    _error(await client.put(url, json={}, headers=auth_header(b_token)), 403, "M_FORBIDDEN")
    room_id = await _room(client, a_token)
    room_url = f"{V3}/user/{alice}/rooms/{room_id}/account_data/org.example.config"
    _error(await client.put(room_url, json={}, headers=auth_header(b_token)), 403, "M_FORBIDDEN")
    _error(await client.get(room_url, headers=auth_header(b_token)), 403, "M_FORBIDDEN")
    _error(
        await client.get(f"{V3}/user/{alice}/rooms/{room_id}/tags", headers=auth_header(b_token)),
        403,
        "M_FORBIDDEN",
    )
    _error(
        await client.put(
            f"{V3}/user/{alice}/rooms/{room_id}/tags/u.x", json={}, headers=auth_header(b_token)
        ),
        403,
        "M_FORBIDDEN",
    )
    _error(
        await client.delete(
            f"{V3}/user/{alice}/rooms/{room_id}/tags/u.x", headers=auth_header(b_token)
        ),
        403,
        "M_FORBIDDEN",
    )


async def test_requires_access_token(client: httpx.AsyncClient) -> None:
    alice, _ = await register(client, "alice")
    _error(await client.get(f"{V3}/user/{alice}/account_data/x"), 401, "M_MISSING_TOKEN")


async def test_bad_bodies(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token)
    for url in (
        f"{V3}/user/{alice}/account_data/org.example.config",
        f"{V3}/user/{alice}/rooms/{room_id}/account_data/org.example.config",
    ):
        _error(
            await client.put(url, content=b"{not json", headers=auth_header(token)),
            400,
            "M_NOT_JSON",
        )
        _error(await client.put(url, json=[1, 2], headers=auth_header(token)), 400, "M_BAD_JSON")
        _error(await client.put(url, json="text", headers=auth_header(token)), 400, "M_BAD_JSON")


@pytest.mark.parametrize("data_type", ["m.fully_read", "m.push_rules"])
async def test_server_managed_types_refused(client: httpx.AsyncClient, data_type: str) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token)
    for url in (
        f"{V3}/user/{alice}/account_data/{data_type}",
        f"{V3}/user/{alice}/rooms/{room_id}/account_data/{data_type}",
    ):
        _error(
            await client.put(url, json={"event_id": "$x"}, headers=auth_header(token)),
            405,
            "M_BAD_JSON",
        )


async def test_too_long_or_empty_type(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    url = f"{V3}/user/{alice}/account_data/{'t' * 256}"
    _error(await client.put(url, json={}, headers=auth_header(token)), 400, "M_INVALID_PARAM")
    _error(
        await client.put(f"{V3}/user/{alice}/account_data/", json={}, headers=auth_header(token)),
        400,
        "M_INVALID_PARAM",
    )


# --- per room ----------------------------------------------------------------------------


async def test_room_round_trip_is_separate_from_global(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token)
    url = f"{V3}/user/{alice}/rooms/{room_id}/account_data/org.example.config"
    _error(await client.get(url, headers=auth_header(token)), 404, "M_NOT_FOUND")
    await _ok(await client.put(url, json={"room": True}, headers=auth_header(token)))
    assert await _ok(await client.get(url, headers=auth_header(token))) == {"room": True}
    # spec: no inheritance between room and global account data of one type.
    _error(
        await client.get(
            f"{V3}/user/{alice}/account_data/org.example.config", headers=auth_header(token)
        ),
        404,
        "M_NOT_FOUND",
    )


async def test_room_account_data_bad_room(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    bad = f"{V3}/user/{alice}/rooms/not-a-room/account_data/org.example.config"
    _error(await client.put(bad, json={}, headers=auth_header(token)), 400, "M_INVALID_PARAM")
    _error(await client.get(bad, headers=auth_header(token)), 400, "M_INVALID_PARAM")
    # A room the user never had a membership in.
    stranger = f"{V3}/user/{alice}/rooms/!nowhere:test/account_data/org.example.config"
    _error(await client.put(stranger, json={}, headers=auth_header(token)), 403, "M_FORBIDDEN")


# --- tags --------------------------------------------------------------------------------


async def test_tags_round_trip(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token)
    tags = f"{V3}/user/{alice}/rooms/{room_id}/tags"
    assert await _ok(await client.get(tags, headers=auth_header(token))) == {"tags": {}}
    await _ok(
        await client.put(f"{tags}/m.favourite", json={"order": 0.25}, headers=auth_header(token))
    )
    await _ok(
        await client.put(
            f"{tags}/u.work", json={"order": 1, "x.custom": "kept"}, headers=auth_header(token)
        )
    )
    await _ok(await client.put(f"{tags}/u.plain", json={}, headers=auth_header(token)))
    body = await _ok(await client.get(tags, headers=auth_header(token)))
    assert body == {
        "tags": {
            "m.favourite": {"order": 0.25},
            "u.work": {"order": 1, "x.custom": "kept"},
            "u.plain": {},
        }
    }
    assert isinstance(body["tags"]["u.work"]["order"], int)
    await _ok(await client.delete(f"{tags}/u.work", headers=auth_header(token)))
    # Deleting again (or a tag never set) is fine.
    await _ok(await client.delete(f"{tags}/u.work", headers=auth_header(token)))
    body = await _ok(await client.get(tags, headers=auth_header(token)))
    assert set(body["tags"]) == {"m.favourite", "u.plain"}
    # The tags are also the room's m.tag account data.
    got = await client.get(
        f"{V3}/user/{alice}/rooms/{room_id}/account_data/m.tag", headers=auth_header(token)
    )
    assert got.json() == body


async def test_tag_with_slash(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token)
    tags = f"{V3}/user/{alice}/rooms/{room_id}/tags"
    await _ok(await client.put(f"{tags}/u.a%2Fb", json={"order": 0.5}, headers=auth_header(token)))
    assert (await client.get(tags, headers=auth_header(token))).json() == {
        "tags": {"u.a/b": {"order": 0.5}}
    }
    await _ok(await client.delete(f"{tags}/u.a%2Fb", headers=auth_header(token)))
    assert (await client.get(tags, headers=auth_header(token))).json() == {"tags": {}}


async def test_tag_limits_and_bad_bodies(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token)
    tags = f"{V3}/user/{alice}/rooms/{room_id}/tags"
    _error(
        await client.put(f"{tags}/{'t' * 256}", json={}, headers=auth_header(token)),
        400,
        "M_INVALID_PARAM",
    )
    # 255 bytes, counted in UTF-8: 85 three-byte characters.
    await _ok(await client.put(f"{tags}/{'€' * 85}", json={}, headers=auth_header(token)))
    _error(
        await client.put(f"{tags}/{'€' * 86}", json={}, headers=auth_header(token)),
        400,
        "M_INVALID_PARAM",
    )
    for body in ({"order": "x"}, {"order": 2}, {"order": -0.1}, {"order": True}):
        _error(
            await client.put(f"{tags}/u.x", json=body, headers=auth_header(token)),
            400,
            "M_BAD_JSON",
        )
    _error(
        await client.put(f"{tags}/u.x", content=b"nope", headers=auth_header(token)),
        400,
        "M_NOT_JSON",
    )
    _error(
        await client.put(
            f"{V3}/user/{alice}/rooms/{room_id}/account_data/m.tag",
            json={"tags": {}},
            headers=auth_header(token),
        ),
        405,
        "M_BAD_JSON",
    )


async def test_tag_needs_a_membership(client: httpx.AsyncClient) -> None:
    alice, a_token = await register(client, "alice")
    _, b_token = await register(client, "bob")
    room_id = await _room(client, b_token)
    _error(
        await client.put(
            f"{V3}/user/{alice}/rooms/{room_id}/tags/u.x", json={}, headers=auth_header(a_token)
        ),
        403,
        "M_FORBIDDEN",
    )


# --- sync --------------------------------------------------------------------------------


async def test_sync_initial_then_only_changes(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token)
    other_room = await _room(client, token)
    h = auth_header(token)
    await _ok(
        await client.put(f"{V3}/user/{alice}/account_data/org.example.a", json={"v": 1}, headers=h)
    )
    await _ok(
        await client.put(f"{V3}/user/{alice}/account_data/org.example.b", json={"v": 1}, headers=h)
    )
    await _ok(
        await client.put(
            f"{V3}/user/{alice}/rooms/{room_id}/account_data/org.example.r",
            json={"r": 1},
            headers=h,
        )
    )
    await _ok(
        await client.put(
            f"{V3}/user/{alice}/rooms/{room_id}/tags/m.favourite", json={"order": 0.1}, headers=h
        )
    )

    initial = await _sync(client, token)
    assert _global(initial) == {"org.example.a": {"v": 1}, "org.example.b": {"v": 1}}
    assert _room_data(initial, room_id) == {
        "org.example.r": {"r": 1},
        "m.tag": {"tags": {"m.favourite": {"order": 0.1}}},
    }
    assert _room_data(initial, other_room) == {}

    # Nothing changed: nothing again.
    quiet = await _sync(client, token, since=initial["next_batch"])
    assert "account_data" not in quiet and "rooms" not in quiet

    await _ok(
        await client.put(f"{V3}/user/{alice}/account_data/org.example.b", json={"v": 2}, headers=h)
    )
    await _ok(
        await client.put(f"{V3}/user/{alice}/rooms/{other_room}/tags/u.later", json={}, headers=h)
    )
    changed = await _sync(client, token, since=quiet["next_batch"])
    assert _global(changed) == {"org.example.b": {"v": 2}}
    assert set(changed["rooms"]["join"]) == {other_room}
    assert _room_data(changed, other_room) == {"m.tag": {"tags": {"u.later": {}}}}
    # Room account data alone brings the room, without a timeline of old events.
    assert changed["rooms"]["join"][other_room]["timeline"]["events"] == []

    # Deleting the last tag sends an empty m.tag, so the client drops it.
    await _ok(await client.delete(f"{V3}/user/{alice}/rooms/{other_room}/tags/u.later", headers=h))
    deleted = await _sync(client, token, since=changed["next_batch"])
    assert _room_data(deleted, other_room) == {"m.tag": {"tags": {}}}
    assert "account_data" not in deleted
    # And an initial sync no longer mentions the room's tags at all.
    assert "m.tag" not in _room_data(await _sync(client, token), other_room)


async def test_sync_filter_on_account_data(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    h = auth_header(token)
    for t in ("org.example.a", "org.example.b"):
        await _ok(await client.put(f"{V3}/user/{alice}/account_data/{t}", json={}, headers=h))
    body = await _sync(client, token, filter='{"account_data": {"types": ["org.example.a"]}}')
    assert set(_global(body)) == {"org.example.a"}


async def test_long_poll_wakes_on_account_data(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    since = (await _sync(client, token))["next_batch"]
    waiting = asyncio.create_task(_sync(client, token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await _ok(
        await client.put(
            f"{V3}/user/{alice}/account_data/org.example.ping",
            json={"at": 1},
            headers=auth_header(token),
        )
    )
    body = await asyncio.wait_for(waiting, 10)
    assert _global(body) == {"org.example.ping": {"at": 1}}


async def test_long_poll_wakes_on_tag(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room_id = await _room(client, token)
    since = (await _sync(client, token))["next_batch"]
    waiting = asyncio.create_task(_sync(client, token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await _ok(
        await client.put(
            f"{V3}/user/{alice}/rooms/{room_id}/tags/m.lowpriority",
            json={},
            headers=auth_header(token),
        )
    )
    body = await asyncio.wait_for(waiting, 10)
    assert _room_data(body, room_id) == {"m.tag": {"tags": {"m.lowpriority": {}}}}


# --- m.direct and m.ignored_user_list ----------------------------------------------------


async def test_m_direct(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    bob, _ = await register(client, "bob")
    room_id = await _room(client, token, invite=[bob], is_direct=True)
    url = f"{V3}/user/{alice}/account_data/m.direct"
    content = {bob: [room_id], "carol@example.org": ["!third:test"]}
    await _ok(await client.put(url, json=content, headers=auth_header(token)))
    assert (await client.get(url, headers=auth_header(token))).json() == content
    assert _global(await _sync(client, token))["m.direct"] == content
    _error(
        await client.put(url, json={bob: room_id}, headers=auth_header(token)), 400, "M_BAD_JSON"
    )
    _error(await client.put(url, json={bob: [1]}, headers=auth_header(token)), 400, "M_BAD_JSON")


async def test_ignored_user_list_validation(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    url = f"{V3}/user/{alice}/account_data/m.ignored_user_list"
    _error(
        await client.put(url, json={"ignored_users": {alice: {}}}, headers=auth_header(token)),
        400,
        "M_INVALID_PARAM",
    )
    _error(await client.put(url, json={}, headers=auth_header(token)), 400, "M_BAD_JSON")
    _error(
        await client.put(url, json={"ignored_users": ["@bob:test"]}, headers=auth_header(token)),
        400,
        "M_BAD_JSON",
    )
    _error(
        await client.put(url, json={"ignored_users": {"bob": {}}}, headers=auth_header(token)),
        400,
        "M_INVALID_PARAM",
    )
    await _ok(
        await client.put(url, json={"ignored_users": {"@bob:test": {}}}, headers=auth_header(token))
    )
    assert (await client.get(url, headers=auth_header(token))).json() == {
        "ignored_users": {"@bob:test": {}}
    }


async def test_ignored_users_messages_hidden_in_sync(client: httpx.AsyncClient) -> None:
    alice, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    _, c_token = await register(client, "carol")
    room_id = await _room(client, a_token, preset="public_chat")
    for t in (b_token, c_token):
        r = await client.post(f"{V3}/join/{room_id}", json={}, headers=auth_header(t))
        assert r.status_code == 200, r.text
    await _ok(
        await client.put(
            f"{V3}/user/{alice}/account_data/m.ignored_user_list",
            json={"ignored_users": {bob: {}}},
            headers=auth_header(a_token),
        )
    )
    since = (await _sync(client, a_token))["next_batch"]

    async def send(token: str, text: str) -> str:
        r = await client.put(
            f"{V3}/rooms/{room_id}/send/m.room.message/{text}",
            json={"msgtype": "m.text", "body": text},
            headers=auth_header(token),
        )
        assert r.status_code == 200, r.text
        return str(r.json()["event_id"])

    await send(b_token, "from-bob")
    carol_event = await send(c_token, "from-carol")
    body = await _sync(client, a_token, since=since)
    events = body["rooms"]["join"][room_id]["timeline"]["events"]
    assert [e["event_id"] for e in events] == [carol_event]
    r = await client.get(
        f"{V3}/rooms/{room_id}/messages",
        params={"dir": "b", "limit": "5"},
        headers=auth_header(a_token),
    )
    assert r.status_code == 200, r.text
    shown = [e for e in r.json()["chunk"] if e["type"] == "m.room.message"]
    assert [e["event_id"] for e in shown] == [carol_event]
    # Bob's state (his join) stays visible: only his other events are hidden.
    assert any(e["type"] == "m.room.member" and e["state_key"] == bob for e in r.json()["chunk"])
    # Un-ignoring: new events from bob arrive again.
    await _ok(
        await client.put(
            f"{V3}/user/{alice}/account_data/m.ignored_user_list",
            json={"ignored_users": {}},
            headers=auth_header(a_token),
        )
    )
    bob_event = await send(b_token, "bob-again")
    body = await _sync(client, a_token, since=body["next_batch"])
    timeline = body["rooms"]["join"][room_id]["timeline"]["events"]
    assert bob_event in [e["event_id"] for e in timeline]
    assert _global(body)["m.ignored_user_list"] == {"ignored_users": {}}
