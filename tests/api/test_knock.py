"""POST /knock/{roomIdOrAlias}: who may knock, what the knocker and the room see, and after."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

V3 = "/_matrix/client/v3"


def checked(r: httpx.Response, status: int = 200, errcode: str | None = None) -> Any:
    assert r.status_code == status, r.text
    body = r.json()
    if errcode is not None:
        assert body["errcode"] == errcode, r.text
    assert_response_matches(r.request.method, r.request.url.raw_path.decode(), status, body)
    return body


async def knock(
    client: httpx.AsyncClient, token: str, target: str, body: Any = None
) -> httpx.Response:
    return await client.post(
        f"{V3}/knock/{target.replace('#', '%23')}",
        json={} if body is None else body,
        headers=auth_header(token),
    )


async def sync(client: httpx.AsyncClient, token: str, since: str | None = None) -> dict[str, Any]:
    params = {"since": since} if since is not None else {}
    body: dict[str, Any] = checked(
        await client.get(f"{V3}/sync", params=params, headers=auth_header(token))
    )
    return body


async def membership(client: httpx.AsyncClient, token: str, room_id: str, user_id: str) -> str:
    r = await client.get(
        f"{V3}/rooms/{room_id}/state/m.room.member/{user_id}", headers=auth_header(token)
    )
    return str(checked(r)["membership"])


async def knock_room(
    client: httpx.AsyncClient,
    token: str,
    join_rule: str = "knock",
    version: str = "11",
    **extra: Any,
) -> str:
    r = await client.post(
        f"{V3}/createRoom",
        headers=auth_header(token),
        json={
            "room_version": version,
            "name": "Clubhouse",
            **extra,
            "initial_state": [
                {
                    "type": "m.room.join_rules",
                    "content": {
                        "join_rule": join_rule,
                        **({"allow": []} if "restricted" in join_rule else {}),
                    },
                }
            ],
        },
    )
    return str(checked(r)["room_id"])


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_knock_then_invite_then_join(client: httpx.AsyncClient, version: str) -> None:
    alice, atok = await register(client, "alice")
    bob, btok = await register(client, "bob")
    room_id = await knock_room(client, atok, version=version)
    since = (await sync(client, btok))["next_batch"]
    r = await knock(client, btok, room_id, {"reason": "let me in"})
    assert checked(r) == {"room_id": room_id}

    # The knock is state: members who may invite see it.
    assert await membership(client, atok, room_id, bob) == "knock"
    r = await client.get(
        f"{V3}/rooms/{room_id}/members", params={"membership": "knock"}, headers=auth_header(atok)
    )
    knocks = checked(r)["chunk"]
    assert [e["state_key"] for e in knocks] == [bob]
    assert knocks[0]["content"]["reason"] == "let me in"

    # The knocker sees the room under rooms.knock, with stripped state.
    body = await sync(client, btok, since)
    entry = body["rooms"]["knock"][room_id]
    stripped = {(e["type"], e["state_key"]): e for e in entry["knock_state"]["events"]}
    assert stripped[("m.room.join_rules", "")]["content"]["join_rule"] == "knock"
    assert stripped[("m.room.name", "")]["content"]["name"] == "Clubhouse"
    assert stripped[("m.room.member", bob)]["content"]["membership"] == "knock"
    assert room_id not in body["rooms"].get("join", {})
    # The knocker does not see the timeline.
    r = await client.get(f"{V3}/rooms/{room_id}/messages", headers=auth_header(btok))
    assert r.status_code == 403

    since = body["next_batch"]
    r = await client.post(
        f"{V3}/rooms/{room_id}/invite", json={"user_id": bob}, headers=auth_header(atok)
    )
    checked(r)
    body = await sync(client, btok, since)
    assert room_id in body["rooms"]["invite"]
    assert room_id not in body["rooms"].get("knock", {})
    r = await client.post(f"{V3}/join/{room_id}", json={}, headers=auth_header(btok))
    checked(r)
    assert await membership(client, atok, room_id, bob) == "join"


async def test_knock_by_alias_and_on_knock_restricted(client: httpx.AsyncClient) -> None:
    _, atok = await register(client, "alice")
    bob, btok = await register(client, "bob")
    room_id = await knock_room(client, atok, "knock_restricted", room_alias_name="club")
    r = await knock(client, btok, "#club:test")
    assert checked(r)["room_id"] == room_id
    assert await membership(client, atok, room_id, bob) == "knock"


async def test_leave_retracts_and_kick_rejects_a_knock(client: httpx.AsyncClient) -> None:
    _, atok = await register(client, "alice")
    bob, btok = await register(client, "bob")
    room_id = await knock_room(client, atok)
    checked(await knock(client, btok, room_id))
    since = (await sync(client, btok))["next_batch"]
    r = await client.post(f"{V3}/rooms/{room_id}/leave", json={}, headers=auth_header(btok))
    checked(r)
    assert await membership(client, atok, room_id, bob) == "leave"
    body = await sync(client, btok, since)
    assert room_id in body["rooms"]["leave"]
    assert room_id not in body["rooms"].get("knock", {})

    # Knock again; alice says no.
    checked(await knock(client, btok, room_id))
    r = await client.post(
        f"{V3}/rooms/{room_id}/kick",
        json={"user_id": bob, "reason": "no"},
        headers=auth_header(atok),
    )
    checked(r)
    assert await membership(client, atok, room_id, bob) == "leave"
    # A ban keeps them from knocking at all.
    r = await client.post(
        f"{V3}/rooms/{room_id}/ban", json={"user_id": bob}, headers=auth_header(atok)
    )
    checked(r)
    checked(await knock(client, btok, room_id), 403, "M_FORBIDDEN")


async def test_who_may_not_knock(client: httpx.AsyncClient) -> None:
    alice, atok = await register(client, "alice")
    bob, btok = await register(client, "bob")
    _, ctok = await register(client, "carol")
    invite_only = await knock_room(client, atok, "invite")
    checked(await knock(client, btok, invite_only), 403, "M_FORBIDDEN")
    public = await knock_room(client, atok, "public")
    checked(await knock(client, btok, public), 403, "M_FORBIDDEN")
    knockable = await knock_room(client, atok)
    # Already joined, or already invited: no knocking.
    checked(await knock(client, atok, knockable), 403, "M_FORBIDDEN")
    r = await client.post(
        f"{V3}/rooms/{knockable}/invite", json={"user_id": bob}, headers=auth_header(atok)
    )
    checked(r)
    checked(await knock(client, btok, knockable), 403, "M_FORBIDDEN")
    # Unknown rooms and aliases.
    checked(await knock(client, ctok, "!nowhere:test"), 404, "M_NOT_FOUND")
    checked(await knock(client, ctok, "#nowhere:test"), 404, "M_NOT_FOUND")


async def test_knock_bad_requests(client: httpx.AsyncClient) -> None:
    _, atok = await register(client, "alice")
    _, btok = await register(client, "bob")
    room_id = await knock_room(client, atok)

    def bad(r: httpx.Response, errcode: str) -> None:
        assert r.status_code == 400, r.text
        assert r.json()["errcode"] == errcode

    bad(await knock(client, btok, "lobby"), "M_INVALID_PARAM")
    bad(await knock(client, btok, room_id, {"reason": 5}), "M_BAD_JSON")
    bad(await knock(client, btok, room_id, ["reason"]), "M_BAD_JSON")
    r = await client.post(f"{V3}/knock/{room_id}", content=b"{oops", headers=auth_header(btok))
    bad(r, "M_NOT_JSON")
    r = await client.post(f"{V3}/knock/{room_id}", json={})
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"
    # `via` is accepted (every room is local here).
    r = await client.post(
        f"{V3}/knock/{room_id}", params={"via": "test"}, json={}, headers=auth_header(btok)
    )
    assert checked(r) == {"room_id": room_id}
