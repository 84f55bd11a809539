"""Room aliases and the public room directory."""

from __future__ import annotations

import httpx

from tests.helpers import auth_header, checked, register
from tests.helpers import create_room as create

V3 = "/_matrix/client/v3"


async def join(client: httpx.AsyncClient, token: str, room_id: str) -> None:
    checked(await client.post(f"{V3}/rooms/{room_id}/join", headers=auth_header(token), json={}))


def alias_url(alias: str) -> str:
    return f"{V3}/directory/room/{alias.replace('#', '%23')}"


async def test_alias_round_trip(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    room_id = await create(client, tok)
    r = await client.put(
        alias_url("#lounge:test"), headers=auth_header(tok), json={"room_id": room_id}
    )
    assert checked(r) == {}
    r = await client.get(alias_url("#lounge:test"))  # no authentication needed
    assert checked(r) == {"room_id": room_id, "servers": ["test"]}
    # Taken: 409.
    other = await create(client, tok)
    r = await client.put(
        alias_url("#lounge:test"), headers=auth_header(tok), json={"room_id": other}
    )
    checked(r, 409, "M_ROOM_IN_USE")
    r = await client.put(
        alias_url("#second:test"), headers=auth_header(tok), json={"room_id": room_id}
    )
    checked(r)
    r = await client.get(f"{V3}/rooms/{room_id}/aliases", headers=auth_header(tok))
    assert checked(r) == {"aliases": ["#lounge:test", "#second:test"]}
    r = await client.delete(alias_url("#lounge:test"), headers=auth_header(tok))
    assert checked(r) == {}
    r = await client.get(alias_url("#lounge:test"))
    checked(r, 404, "M_NOT_FOUND")
    r = await client.delete(alias_url("#lounge:test"), headers=auth_header(tok))
    checked(r, 404, "M_NOT_FOUND")
    r = await client.get(f"{V3}/rooms/{room_id}/aliases", headers=auth_header(tok))
    assert checked(r) == {"aliases": ["#second:test"]}
    # Freed, the alias can point elsewhere.
    r = await client.put(
        alias_url("#lounge:test"), headers=auth_header(tok), json={"room_id": other}
    )
    checked(r)
    r = await client.get(alias_url("#lounge:test"))
    assert checked(r)["room_id"] == other


async def test_alias_errors(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    room_id = await create(client, tok)
    # Not our server, not an alias, no room, unknown room, not in the room.
    r = await client.put(
        alias_url("#x:elsewhere"), headers=auth_header(tok), json={"room_id": room_id}
    )
    checked(r, 400, "M_INVALID_PARAM")
    r = await client.put(
        alias_url("nohash:test"), headers=auth_header(tok), json={"room_id": room_id}
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)  # the path itself is off-spec
    r = await client.put(alias_url("#x:test"), headers=auth_header(tok), json={})
    checked(r, 400, "M_MISSING_PARAM")
    r = await client.put(alias_url("#x:test"), headers=auth_header(tok), json={"room_id": 1})
    checked(r, 400, "M_BAD_JSON")
    r = await client.put(
        alias_url("#x:test"), headers=auth_header(tok), json={"room_id": "!unknown:test"}
    )
    assert r.status_code in (403, 404) and r.json()["errcode"] in ("M_NOT_FOUND", "M_FORBIDDEN")
    r = await client.put(
        alias_url("#x:test"), headers=auth_header(b_tok), json={"room_id": room_id}
    )
    checked(r, 403, "M_FORBIDDEN", documented=False)
    r = await client.put(alias_url("#x:test"), json={"room_id": room_id})
    checked(r, 401, "M_MISSING_TOKEN", documented=False)
    r = await client.get(alias_url("#unknown:test"))
    checked(r, 404, "M_NOT_FOUND")
    r = await client.get(alias_url("nohash"))
    checked(r, 400, "M_INVALID_PARAM", documented=False)


async def test_alias_delete_permissions(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    room_id = await create(
        client,
        tok,
        preset="public_chat",
        room_version="11",
        power_level_content_override={"users": {alice: 100, carol: 50}},
    )
    await join(client, b_tok, room_id)
    await join(client, c_tok, room_id)
    # bob (power 0) may make an alias and delete his own ...
    r = await client.put(
        alias_url("#bobs:test"), headers=auth_header(b_tok), json={"room_id": room_id}
    )
    checked(r)
    r = await client.put(
        alias_url("#alices:test"), headers=auth_header(tok), json={"room_id": room_id}
    )
    checked(r)
    # ... but not alice's: not the creator, and below the canonical alias level.
    r = await client.delete(alias_url("#alices:test"), headers=auth_header(b_tok))
    checked(r, 403, "M_FORBIDDEN", documented=False)
    r = await client.get(alias_url("#alices:test"))
    assert checked(r)["room_id"] == room_id
    r = await client.delete(alias_url("#bobs:test"), headers=auth_header(b_tok))
    checked(r)
    # carol, a moderator, may delete another's alias.
    r = await client.delete(alias_url("#alices:test"), headers=auth_header(c_tok))
    checked(r)
    r = await client.get(f"{V3}/rooms/{room_id}/aliases", headers=auth_header(tok))
    assert checked(r) == {"aliases": []}


async def test_room_aliases_access(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    room_id = await create(client, tok, room_alias_name="priv")
    r = await client.get(f"{V3}/rooms/{room_id}/aliases", headers=auth_header(tok))
    assert checked(r) == {"aliases": ["#priv:test"]}
    r = await client.get(f"{V3}/rooms/{room_id}/aliases", headers=auth_header(b_tok))
    checked(r, 403, "M_FORBIDDEN")
    r = await client.get(f"{V3}/rooms/!unknown:test/aliases", headers=auth_header(b_tok))
    checked(r, 403, "M_FORBIDDEN")
    readable = await create(
        client,
        tok,
        room_alias_name="open",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "content": {"history_visibility": "world_readable"},
            }
        ],
    )
    r = await client.get(f"{V3}/rooms/{readable}/aliases", headers=auth_header(b_tok))
    assert checked(r) == {"aliases": ["#open:test"]}
    r = await client.get(f"{V3}/rooms/{room_id}/aliases")
    checked(r, 401, "M_MISSING_TOKEN", documented=False)


async def test_directory_visibility(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    room_id = await create(client, tok, preset="public_chat")
    url = f"{V3}/directory/list/room/{room_id}"
    r = await client.get(url)
    assert checked(r) == {"visibility": "private"}
    r = await client.put(url, headers=auth_header(tok), json={"visibility": "public"})
    assert checked(r) == {}
    r = await client.get(url)
    assert checked(r) == {"visibility": "public"}
    # Not for a power-level-0 member, nor a stranger.
    await join(client, b_tok, room_id)
    r = await client.put(url, headers=auth_header(b_tok), json={"visibility": "private"})
    checked(r, 403, "M_FORBIDDEN", documented=False)
    r = await client.put(url, headers=auth_header(tok), json={"visibility": "hidden"})
    checked(r, 400, "M_BAD_JSON", documented=False)
    r = await client.put(url, headers=auth_header(tok), json={})
    checked(r, 400, "M_MISSING_PARAM", documented=False)
    r = await client.get(f"{V3}/directory/list/room/!unknown:test")
    checked(r, 404, "M_NOT_FOUND")
    r = await client.put(
        f"{V3}/directory/list/room/!unknown:test",
        headers=auth_header(tok),
        json={"visibility": "public"},
    )
    checked(r, 404, "M_NOT_FOUND")
    r = await client.put(url, headers=auth_header(tok), json={"visibility": "private"})
    checked(r)
    r = await client.get(f"{V3}/publicRooms")
    assert checked(r)["chunk"] == []
    assert alice


async def test_public_rooms(client: httpx.AsyncClient) -> None:
    users = [await register(client, name) for name in ("alice", "bob", "carol", "dave")]
    tok = users[0][1]
    # Rooms of 1 to 4 members; and one private room that never shows.
    rooms = []
    for size, (name, topic) in enumerate(
        [
            ("Tea", "Earl Grey"),
            ("Coffee", "espresso"),
            ("Chess", "openings"),
            ("Jazz", "Monk & co"),
        ],
        start=1,
    ):
        room_id = await create(
            client, tok, visibility="public", name=name, topic=topic, room_alias_name=name.lower()
        )
        for _, member_tok in users[1:size]:
            await join(client, member_tok, room_id)
        rooms.append(room_id)
    await create(client, tok, name="Secret", preset="public_chat")
    r = await client.get(f"{V3}/publicRooms")
    body = checked(r)
    assert [e["room_id"] for e in body["chunk"]] == rooms[::-1]  # the largest first
    assert body["total_room_count_estimate"] == 4
    assert "next_batch" not in body and "prev_batch" not in body
    jazz = body["chunk"][0]
    assert jazz == {
        "room_id": rooms[3],
        "name": "Jazz",
        "topic": "Monk & co",
        "canonical_alias": "#jazz:test",
        "num_joined_members": 4,
        "world_readable": False,
        "guest_can_join": False,
        "join_rule": "public",
    }
    assert [e["num_joined_members"] for e in body["chunk"]] == [4, 3, 2, 1]
    # Pages of 3, forward and back.
    r = await client.get(f"{V3}/publicRooms", params={"limit": "3"})
    first = checked(r)
    assert [e["room_id"] for e in first["chunk"]] == rooms[:0:-1]
    assert "prev_batch" not in first
    r = await client.get(f"{V3}/publicRooms", params={"limit": "3", "since": first["next_batch"]})
    second = checked(r)
    assert [e["room_id"] for e in second["chunk"]] == rooms[:1]
    assert "next_batch" not in second
    r = await client.get(f"{V3}/publicRooms", params={"limit": "3", "since": second["prev_batch"]})
    assert checked(r)["chunk"] == first["chunk"]
    r = await client.get(f"{V3}/publicRooms", params={"since": "garbage"})
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    r = await client.get(f"{V3}/publicRooms", params={"limit": "x"})
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    # POST: a search term over name, topic and alias; same pagination.
    url = f"{V3}/publicRooms"
    r = await client.post(
        url, headers=auth_header(tok), json={"filter": {"generic_search_term": "ESPRESSO"}}
    )
    body = checked(r)
    assert [e["room_id"] for e in body["chunk"]] == [rooms[1]]
    assert body["total_room_count_estimate"] == 1
    r = await client.post(
        url, headers=auth_header(tok), json={"filter": {"generic_search_term": "#chess"}}
    )
    assert [e["room_id"] for e in checked(r)["chunk"]] == [rooms[2]]
    r = await client.post(
        url, headers=auth_header(tok), json={"filter": {"generic_search_term": "nothing here"}}
    )
    assert checked(r)["chunk"] == []
    r = await client.post(url, headers=auth_header(tok), json={"limit": 2})
    page = checked(r)
    assert [e["room_id"] for e in page["chunk"]] == rooms[:1:-1]
    r = await client.post(
        url, headers=auth_header(tok), json={"limit": 2, "since": page["next_batch"]}
    )
    page = checked(r)
    assert [e["room_id"] for e in page["chunk"]] == rooms[1::-1]
    assert "next_batch" not in page and "prev_batch" in page
    r = await client.post(url, headers=auth_header(tok), json={})
    assert len(checked(r)["chunk"]) == 4
    r = await client.post(url, headers=auth_header(tok), json={"limit": "2"})
    checked(r, 400, "M_BAD_JSON", documented=False)
    r = await client.post(
        url, headers=auth_header(tok), json={"filter": {"generic_search_term": 5}}
    )
    checked(r, 400, "M_BAD_JSON", documented=False)
    r = await client.post(url, json={})
    checked(r, 401, "M_MISSING_TOKEN", documented=False)
    # Counts follow the members: bob leaves Jazz.
    checked(
        await client.post(f"{V3}/rooms/{rooms[3]}/leave", headers=auth_header(users[1][1]), json={})
    )
    r = await client.get(f"{V3}/publicRooms")
    counts = {e["room_id"]: e["num_joined_members"] for e in checked(r)["chunk"]}
    assert counts == {rooms[0]: 1, rooms[1]: 2, rooms[2]: 3, rooms[3]: 3}


async def test_public_rooms_room_types(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    room = await create(client, tok, visibility="public", name="Room")
    space = await create(
        client, tok, visibility="public", name="Space", creation_content={"type": "m.space"}
    )
    url = f"{V3}/publicRooms"

    async def listed(room_types: list[str | None]) -> set[str]:
        r = await client.post(
            url, headers=auth_header(tok), json={"filter": {"room_types": room_types}}
        )
        return {e["room_id"] for e in checked(r)["chunk"]}

    assert await listed(["m.space"]) == {space}
    assert await listed([None]) == {room}
    assert await listed([None, "m.space"]) == {room, space}
    r = await client.get(url)
    types = {e["room_id"]: e.get("room_type") for e in checked(r)["chunk"]}
    assert types == {room: None, space: "m.space"}


async def test_canonical_alias_must_point_to_the_room(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create(client, token, room_alias_name="hall")
    await create(client, token, room_alias_name="other")  # #other:test: another room's
    url = f"{V3}/rooms/{room}/state/m.room.canonical_alias/"

    async def put(content: object) -> httpx.Response:
        return await client.put(url, headers=auth_header(token), json=content)

    assert (await put({"alias": "#hall:test"})).status_code == 200
    checked(
        await client.put(
            alias_url("#second:test"), headers=auth_header(token), json={"room_id": room}
        )
    )
    assert (await put({"alias": "#hall:test", "alt_aliases": ["#second:test"]})).status_code == 200
    # spec: an added alias that is unknown or another room's is M_BAD_ALIAS...
    for content in [
        {"alias": "#missing:test"},
        {"alias": "#other:test"},
        {"alias": "#hall:test", "alt_aliases": ["#missing:test"]},
    ]:
        r = await put(content)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_ALIAS"), content
    # ...one that is no alias at all (or no string) M_INVALID_PARAM.
    for content in [
        {"alias": "%hall:test"},
        {"alias": "#hall:test", "alt_aliases": ["no alias"]},
        {"alias": 5},
        {"alt_aliases": "#hall:test"},
        {"alt_aliases": [1]},
    ]:
        r = await put(content)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), content
    # Aliases already in the event are not checked again (this one was deleted since).
    r = await client.delete(alias_url("#second:test"), headers=auth_header(token))
    assert r.status_code == 200
    assert (
        await put({"alias": "#hall:test", "alt_aliases": ["#second:test", "#x:remote.test"]})
    ).status_code == 200
    # Removing the canonical alias altogether needs no check.
    assert (await put({})).status_code == 200
