"""OpenID tokens and userinfo, /mutual_rooms, /rooms/{roomId}/timestamp_to_event."""

from __future__ import annotations

from urllib.parse import quote

import httpx

from homeserver.accounts.openid import TOKEN_LIFETIME_MS
from homeserver.core.clock import FakeClock
from tests.api.test_messages import send
from tests.helpers import assert_errors, auth_header, checked, create_room, register

USERINFO = "/_matrix/federation/v1/openid/userinfo"
MUTUAL = "/_matrix/client/v1/mutual_rooms"


def _openid(user_id: str) -> str:
    return f"/_matrix/client/v3/user/{quote(user_id)}/openid/request_token"


def _ts(room_id: str) -> str:
    return f"/_matrix/client/v1/rooms/{quote(room_id)}/timestamp_to_event"


async def _join(client: httpx.AsyncClient, token: str, room_id: str) -> None:
    r = await client.post(f"/_matrix/client/v3/join/{quote(room_id)}", headers=auth_header(token))
    checked(r)


# --- OpenID ---------------------------------------------------------------------------------


async def test_openid_token_names_its_user_until_it_expires(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    user_id, token = await register(client, "alice")
    body = checked(await client.post(_openid(user_id), headers=auth_header(token), json={}))
    assert body["token_type"] == "Bearer"
    assert body["matrix_server_name"] == "test"
    assert body["expires_in"] == TOKEN_LIFETIME_MS // 1000
    info = await client.get(USERINFO, params={"access_token": body["access_token"]})
    assert (info.status_code, info.json()) == (200, {"sub": user_id})
    # The OpenID token is no access token, and the access token is no OpenID token.
    me = await client.get(
        "/_matrix/client/v3/account/whoami", headers=auth_header(body["access_token"])
    )
    assert me.json()["errcode"] == "M_UNKNOWN_TOKEN"
    other = await client.get(USERINFO, params={"access_token": token})
    assert (other.status_code, other.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    clock.advance(TOKEN_LIFETIME_MS)
    expired = await client.get(USERINFO, params={"access_token": body["access_token"]})
    assert (expired.status_code, expired.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_openid_bad_requests(client: httpx.AsyncClient) -> None:
    user_id, token = await register(client, "alice")
    bob, _ = await register(client, "bob")
    headers = auth_header(token)
    await assert_errors(
        client,
        "POST",
        _openid(user_id),
        [(b"not json", 400, "M_NOT_JSON"), ([1], 400, "M_BAD_JSON")],
        headers,
    )
    await assert_errors(client, "POST", _openid(bob), [({}, 403, "M_FORBIDDEN")], headers)
    await assert_errors(client, "POST", _openid("alice"), [({}, 400, "M_INVALID_PARAM")], headers)
    await assert_errors(client, "POST", _openid(user_id), [({}, 401, "M_MISSING_TOKEN")])
    missing = await client.get(USERINFO)
    assert (missing.status_code, missing.json()["errcode"]) == (401, "M_MISSING_TOKEN")


# --- mutual rooms ---------------------------------------------------------------------------


async def test_mutual_rooms_are_the_rooms_both_joined(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    bob_id, bob = await register(client, "bob")
    carol_id, _ = await register(client, "carol")
    shared = sorted(
        [
            await create_room(client, alice, preset="public_chat"),
            await create_room(client, alice, preset="public_chat"),
        ]
    )
    for room in shared:
        await _join(client, bob, room)
    await create_room(client, alice, preset="public_chat")  # Alice's alone
    left = await create_room(client, alice, preset="public_chat")
    await _join(client, bob, left)
    checked(
        await client.post(
            f"/_matrix/client/v3/rooms/{quote(left)}/leave", headers=auth_header(bob), json={}
        )
    )
    body = checked(await client.get(MUTUAL, params={"user_id": bob_id}, headers=auth_header(alice)))
    assert body == {"joined": shared, "count": 2}
    # spec: a user who is not in any room with us (or does not exist): an empty list.
    none = checked(
        await client.get(MUTUAL, params={"user_id": carol_id}, headers=auth_header(alice))
    )
    assert none == {"joined": [], "count": 0}
    ghost = {"user_id": "@ghost:elsewhere.test"}
    assert (
        checked(await client.get(MUTUAL, params=ghost, headers=auth_header(alice)))["joined"] == []
    )
    # Paging from the first room leaves the second.
    page = await client.get(
        MUTUAL, params={"user_id": bob_id, "from": shared[0]}, headers=auth_header(alice)
    )
    assert checked(page)["joined"] == shared[1:]


async def test_mutual_rooms_bad_requests(client: httpx.AsyncClient) -> None:
    alice_id, alice = await register(client, "alice")
    headers = auth_header(alice)
    cases = [
        ({}, 400, "M_MISSING_PARAM"),
        ({"user_id": alice_id}, 400, "M_INVALID_PARAM"),
        ({"user_id": "alice"}, 400, "M_INVALID_PARAM"),
        ({"user_id": "@bob:test", "from": "garbage"}, 400, "M_INVALID_PARAM"),
    ]
    for params, status, errcode in cases:
        r = await client.get(MUTUAL, params=params, headers=headers)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), (params, r.text)
    r = await client.get(MUTUAL, params={"user_id": "@bob:test"})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


# --- timestamp_to_event ---------------------------------------------------------------------


async def test_timestamp_to_event_finds_the_nearest_event(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    _, token = await register(client, "alice")
    headers = auth_header(token)
    room = await create_room(client, token)
    clock.advance(10_000)
    t1 = clock.now_ms()
    first = await send(client, token, room, "one")
    clock.advance(10_000)
    second = await send(client, token, room, "two")
    t2 = clock.now_ms()

    async def at(ts: int, direction: str) -> dict[str, object]:
        r = await client.get(_ts(room), params={"ts": ts, "dir": direction}, headers=headers)
        body: dict[str, object] = checked(r)
        return body

    assert await at(t1, "f") == {"event_id": first, "origin_server_ts": t1}
    assert (await at(t1 + 1, "f"))["event_id"] == second
    assert (await at(t1 + 1, "b"))["event_id"] == first
    assert (await at(t2 + 5_000, "b"))["event_id"] == second
    later = await client.get(_ts(room), params={"ts": t2 + 1, "dir": "f"}, headers=headers)
    checked(later, 404, "M_NOT_FOUND")
    # Before the room existed there is nothing to find backwards.
    earlier = await client.get(_ts(room), params={"ts": 1, "dir": "b"}, headers=headers)
    checked(earlier, 404, "M_NOT_FOUND")


async def test_timestamp_to_event_bad_requests(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    room = await create_room(client, alice)
    headers = auth_header(alice)
    cases = [
        ({"dir": "f"}, 400, "M_MISSING_PARAM"),
        ({"ts": 5}, 400, "M_MISSING_PARAM"),
        ({"ts": "soon", "dir": "f"}, 400, "M_INVALID_PARAM"),
        ({"ts": -1, "dir": "f"}, 400, "M_INVALID_PARAM"),
        ({"ts": 5, "dir": "x"}, 400, "M_INVALID_PARAM"),
    ]
    for params, status, errcode in cases:
        r = await client.get(_ts(room), params=params, headers=headers)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), (params, r.text)
    ok = {"ts": 5, "dir": "f"}
    outsider = await client.get(_ts(room), params=ok, headers=auth_header(bob))
    checked(outsider, 403, "M_FORBIDDEN", documented=False)
    unknown = await client.get(_ts("!nowhere:test"), params=ok, headers=headers)
    assert unknown.json()["errcode"] == "M_FORBIDDEN"
    bad_room = await client.get(_ts("nowhere"), params=ok, headers=headers)
    assert (bad_room.status_code, bad_room.json()["errcode"]) == (400, "M_INVALID_PARAM")
    anonymous = await client.get(_ts(room), params=ok)
    assert anonymous.json()["errcode"] == "M_MISSING_TOKEN"
