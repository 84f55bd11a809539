"""Sliding sync (MSC4186) list filters on account data and names: tags, not_tags,
room_name_like; each on a first request and as it changes between two requests."""

from __future__ import annotations

import httpx

from tests.api.sliding_helpers import ids, post, put, room_list, send, sliding
from tests.helpers import auth_header, create_room, register


async def _tag(client: httpx.AsyncClient, token: str, user: str, room: str, tag: str) -> None:
    await put(client, token, f"/user/{user}/rooms/{room}/tags/{tag}", {"order": 0.5})


async def _untag(client: httpx.AsyncClient, token: str, user: str, room: str, tag: str) -> None:
    r = await client.delete(
        f"/_matrix/client/v3/user/{user}/rooms/{room}/tags/{tag}", headers=auth_header(token)
    )
    assert r.status_code == 200, r.text


async def test_tags_and_not_tags(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    favourite = await create_room(client, token)
    low = await create_room(client, token)
    both = await create_room(client, token)
    plain = await create_room(client, token)
    await _tag(client, token, alice, favourite, "m.favourite")
    await _tag(client, token, alice, low, "m.lowpriority")
    await _tag(client, token, alice, both, "m.favourite")
    await _tag(client, token, alice, both, "u.work")
    lists = {
        "favourites": room_list(tags=["m.favourite"]),
        "either": room_list(tags=["m.favourite", "m.lowpriority"]),
        "not_low": room_list(not_tags=["m.lowpriority"]),
        # not_tags wins over tags (Synapse's rule).
        "fav_not_work": room_list(tags=["m.favourite"], not_tags=["u.work"]),
        "none": room_list(tags=[]),
        "all": room_list(not_tags=[]),
    }
    body = await sliding(client, token, {"lists": lists})
    assert set(ids(body, "favourites")) == {favourite, both}
    assert set(ids(body, "either")) == {favourite, low, both}
    assert set(ids(body, "not_low")) == {favourite, both, plain}
    assert ids(body, "fav_not_work") == [favourite]
    assert body["lists"]["none"]["count"] == 0
    assert set(ids(body, "all")) == {favourite, low, both, plain}


async def test_a_tag_change_moves_a_room_between_lists(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    room = await create_room(client, token, name="Soon a favourite")
    other = await create_room(client, token)
    request = {
        "lists": {
            "favourites": room_list(tags=["m.favourite"], timeline_limit=1),
            "rest": room_list([[0, 0]], not_tags=["m.favourite"], timeline_limit=1),
        }
    }
    first = await sliding(client, token, request)
    assert first["lists"]["favourites"]["count"] == 0
    assert ids(first, "rest") == [other]  # the window holds the newest room only
    assert room not in first["rooms"]

    await _tag(client, token, alice, room, "m.favourite")
    second = await sliding(client, token, request, pos=first["pos"], timeout=10_000)
    assert ids(second, "favourites") == [room]
    assert ids(second, "rest") == [other]
    # Newly in a window: sent from scratch.
    assert second["rooms"][room]["initial"] is True
    assert second["rooms"][room]["name"] == "Soon a favourite"

    await _untag(client, token, alice, room, "m.favourite")
    await _tag(client, token, alice, other, "m.favourite")
    third = await sliding(client, token, request, pos=second["pos"])
    assert ids(third, "favourites") == [other]
    assert ids(third, "rest") == [room]
    # Both rooms are already on the connection and nothing happened in them.
    assert third["rooms"] == {}

    await send(client, token, room, "still listed where it belongs")
    fourth = await sliding(client, token, request, pos=third["pos"])
    assert ids(fourth, "rest") == [room]
    assert list(fourth["rooms"]) == [room]


async def test_tags_are_per_user(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, token, invite=[bob])
    await post(client, bob_token, f"/join/{room}", {})
    await _tag(client, bob_token, bob, room, "m.favourite")
    mine = await sliding(client, token, {"lists": {"fav": room_list(tags=["m.favourite"])}})
    theirs = await sliding(client, bob_token, {"lists": {"fav": room_list(tags=["m.favourite"])}})
    assert mine["lists"]["fav"]["count"] == 0
    assert ids(theirs, "fav") == [room]


async def test_room_name_like(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    await put(client, bob_token, f"/profile/{bob}/displayname", {"displayname": "Bobby Tables"})
    named = await create_room(client, token, name="Weekly Planning")
    aliased = await create_room(client, token, room_alias_name="planning-archive")
    unnamed = await create_room(client, token, invite=[bob])
    await post(client, bob_token, f"/join/{unnamed}", {})
    invite = await create_room(client, bob_token, name="Planning party", invite=[alice])
    left = await create_room(client, bob_token, name="Old planning", invite=[alice])
    await post(client, token, f"/join/{left}", {})
    lists = {
        "planning": room_list(room_name_like="PLANNING"),
        "hero": room_list(room_name_like="tables"),
        "nothing": room_list(room_name_like="no such room"),
        "empty": room_list(room_name_like=""),
    }
    body = await sliding(client, token, {"lists": lists})
    assert set(ids(body, "planning")) == {named, aliased, invite, left}
    assert ids(body, "hero") == [unnamed]
    assert body["lists"]["nothing"]["count"] == 0
    assert set(ids(body, "empty")) == {named, aliased, unnamed, invite, left}

    # A rename moves the room out at the next response; a room the user left is listed
    # once more under the name it had when they left, whatever it is called since.
    await put(client, token, f"/rooms/{named}/state/m.room.name", {"name": "Retro"})
    await post(client, token, f"/rooms/{left}/leave", {})
    await put(client, bob_token, f"/rooms/{left}/state/m.room.name", {"name": "Secret"})
    second = await sliding(client, token, {"lists": lists}, pos=body["pos"])
    assert set(ids(second, "planning")) == {aliased, invite, left}
    third = await sliding(
        client, token, {"lists": {"secret": room_list(room_name_like="secret")}}, pos=body["pos"]
    )
    assert third["lists"]["secret"]["count"] == 0


async def test_m_direct_change_moves_a_room_between_lists(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, token, invite=[bob])
    await post(client, bob_token, f"/join/{room}", {})
    request = {"lists": {"dms": room_list(is_dm=True), "rooms": room_list(is_dm=False)}}
    first = await sliding(client, token, request)
    assert ids(first, "rooms") == [room] and first["lists"]["dms"]["count"] == 0
    await put(client, token, f"/user/{alice}/account_data/m.direct", {bob: [room]})
    second = await sliding(client, token, request, pos=first["pos"])
    assert ids(second, "dms") == [room] and second["lists"]["rooms"]["count"] == 0
    await put(client, token, f"/user/{alice}/account_data/m.direct", {})
    third = await sliding(client, token, request, pos=second["pos"])
    assert ids(third, "rooms") == [room] and third["lists"]["dms"]["count"] == 0
