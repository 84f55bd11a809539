"""Spaces: GET /rooms/{roomId}/hierarchy (spec v1.19 space_hierarchy.yaml)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from homeserver.core.clock import FakeClock
from tests.helpers import auth_header, checked, create_room, register


def hierarchy_url(room: str) -> str:
    return f"/_matrix/client/v1/rooms/{quote(room)}/hierarchy"


async def hierarchy(
    client: httpx.AsyncClient, token: str, room: str, **params: Any
) -> dict[str, Any]:
    r = await client.get(hierarchy_url(room), params=params, headers=auth_header(token))
    body: dict[str, Any] = checked(r)
    return body


async def space(client: httpx.AsyncClient, token: str, **body: Any) -> str:
    return await create_room(client, token, creation_content={"type": "m.space"}, **body)


async def add_child(
    client: httpx.AsyncClient, token: str, parent: str, child: str, **content: Any
) -> None:
    content.setdefault("via", ["test"])
    r = await client.put(
        f"/_matrix/client/v3/rooms/{quote(parent)}/state/m.space.child/{quote(child)}",
        headers=auth_header(token),
        json=content,
    )
    checked(r)


def ids(body: dict[str, Any]) -> list[str]:
    return [room["room_id"] for room in body["rooms"]]


async def test_walks_depth_first_in_the_spec_order(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    _, token = await register(client, "alice")
    root = await space(client, token, name="Root", preset="public_chat")
    sub = await space(client, token, name="Sub", preset="public_chat")
    a = await create_room(client, token, name="A", preset="public_chat")
    b = await create_room(client, token, name="B", preset="public_chat")
    c = await create_room(client, token, name="C", preset="public_chat")
    d = await create_room(
        client,
        token,
        name="D",
        preset="public_chat",
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ],
    )
    # Order: a valid "order" first (by it), then by the child event's timestamp.
    await add_child(client, token, root, b)
    clock.advance(1000)
    await add_child(client, token, root, sub, order="b")
    clock.advance(1000)
    await add_child(client, token, root, a, order="a")
    clock.advance(1000)
    await add_child(client, token, root, c, order="\x01 not printable")
    await add_child(client, token, sub, d, suggested=True)
    body = await hierarchy(client, token, root)
    assert ids(body) == [root, a, sub, d, b, c]
    assert "next_batch" not in body
    first = body["rooms"][0]
    assert first["room_type"] == "m.space" and first["name"] == "Root"
    assert first["join_rule"] == "public" and first["num_joined_members"] == 1
    assert isinstance(first["room_version"], str)
    assert "membership" not in first
    children = first["children_state"]
    assert [e["state_key"] for e in children] == [a, sub, b, c]
    assert set(children[0]) == {"type", "state_key", "content", "sender", "origin_server_ts"}
    assert children[0]["content"] == {"via": ["test"], "order": "a"}
    leaf = body["rooms"][ids(body).index(d)]
    assert leaf["children_state"] == [] and leaf["encryption"] == "m.megolm.v1.aes-sha2"
    # max_depth and suggested_only.
    assert ids(await hierarchy(client, token, root, max_depth=0)) == [root]
    assert ids(await hierarchy(client, token, root, max_depth=1)) == [root, a, sub, b, c]
    assert ids(await hierarchy(client, token, sub, suggested_only="true")) == [sub, d]
    assert ids(await hierarchy(client, token, root, suggested_only="true")) == [root]
    # A room that is not a space has no children, even with m.space.child events.
    await add_child(client, token, a, b)
    assert (await hierarchy(client, token, a))["rooms"][0]["children_state"] == []


async def test_cycles_and_invalid_children(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    one = await space(client, token, preset="public_chat")
    two = await space(client, token, preset="public_chat")
    await add_child(client, token, one, two)
    await add_child(client, token, two, one)
    await add_child(client, token, two, two)
    # Unknown here (federation would ask "elsewhere"), no via, an empty via: left out.
    await add_child(client, token, one, "!unknown:elsewhere", via=["elsewhere"])
    await add_child(client, token, two, "!novia:test", via=None)
    await add_child(client, token, two, "!emptyvia:test", via=[])
    body = await hierarchy(client, token, one)
    assert ids(body) == [one, two]
    assert [e["state_key"] for e in body["rooms"][1]["children_state"]] == sorted([one, two])
    assert "next_batch" not in body


async def test_only_rooms_the_user_may_see(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    bob_id, bob = await register(client, "bob")
    root = await space(client, alice, preset="public_chat")
    private = await create_room(client, alice, name="Private")
    public = await create_room(client, alice, preset="public_chat")
    readable = await create_room(
        client,
        alice,
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "content": {"history_visibility": "world_readable"},
            }
        ],
    )
    restricted = await create_room(
        client,
        alice,
        room_version="10",
        initial_state=[
            {
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": root}],
                },
            }
        ],
    )
    knock = await create_room(
        client,
        alice,
        room_version="10",
        initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
    )
    banned = await create_room(client, alice, preset="public_chat")
    sub_private = await space(client, alice)  # invite-only: its children are hidden too
    hidden_under = await create_room(client, alice, preset="public_chat")
    for child in (private, public, readable, restricted, knock, banned, sub_private):
        await add_child(client, alice, root, child)
    await add_child(client, alice, sub_private, hidden_under)
    r = await client.post(
        f"/_matrix/client/v3/rooms/{quote(banned)}/ban",
        headers=auth_header(alice),
        json={"user_id": bob_id},
    )
    checked(r)
    # Bob is not in the root space yet: the restricted room's rule is not met.
    visible = set(ids(await hierarchy(client, bob, root)))
    assert visible == {root, public, readable, knock}
    r = await client.post(f"/_matrix/client/v3/join/{quote(root)}", headers=auth_header(bob))
    checked(r)
    visible = set(ids(await hierarchy(client, bob, root)))
    assert visible == {root, public, readable, knock, restricted}
    # An invite opens the private room.
    r = await client.post(
        f"/_matrix/client/v3/rooms/{quote(private)}/invite",
        headers=auth_header(alice),
        json={"user_id": bob_id},
    )
    checked(r)
    assert private in ids(await hierarchy(client, bob, root))
    # Alice sees everything.
    assert set(ids(await hierarchy(client, alice, root))) == {
        root,
        private,
        public,
        readable,
        restricted,
        knock,
        banned,
        sub_private,
        hidden_under,
    }


async def test_pagination(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    root = await space(client, token, preset="public_chat")
    sub = await space(client, token, preset="public_chat")
    await add_child(client, token, root, sub, order="0")
    for i in range(3):
        room = await create_room(client, token, preset="public_chat")
        await add_child(client, token, root, room, order=f"{i + 1}")
        leaf = await create_room(client, token, preset="public_chat")
        await add_child(client, token, sub, leaf, order=f"{i}")
    whole = ids(await hierarchy(client, token, root))
    assert len(whole) == 8
    for limit in (1, 3):
        seen: list[str] = []
        token_from: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if token_from is not None:
                params["from"] = token_from
            body = await hierarchy(client, token, root, **params)
            assert len(body["rooms"]) <= limit
            seen += ids(body)
            token_from = body.get("next_batch")
            if token_from is None:
                break
        assert seen == whole
    first = await hierarchy(client, token, root, limit=2, max_depth=3)
    again = await hierarchy(client, token, root, limit=2, **{"from": first["next_batch"]})
    assert ids(again) == whole[2:4]  # the token keeps the walk's max_depth
    headers = auth_header(token)
    token_from = first["next_batch"]
    for params in (
        {"from": token_from, "max_depth": 2},
        {"from": token_from, "suggested_only": "true"},
        {"from": "garbage"},
        {"from": "W10"},  # "[]"
        {"from": "WyIhYTp0ZXN0IixmYWxzZSwxLDFd"},  # another room's walk
    ):
        r = await client.get(hierarchy_url(root), params=params, headers=headers)
        checked(r, 400, "M_INVALID_PARAM")


async def test_errors(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    private = await space(client, alice)
    headers = auth_header(alice)
    r = await client.get(hierarchy_url(private), headers=auth_header(bob))
    checked(r, 403, "M_FORBIDDEN")
    r = await client.get(hierarchy_url("!nowhere:test"), headers=headers)
    checked(r, 403, "M_FORBIDDEN")
    r = await client.get(hierarchy_url("not-a-room"), headers=headers)
    assert r.status_code == 400
    for params in (
        {"limit": "0"},
        {"limit": "many"},
        {"max_depth": "-1"},
        {"suggested_only": "maybe"},
    ):
        r = await client.get(hierarchy_url(private), params=params, headers=headers)
        checked(r, 400, "M_INVALID_PARAM")
    r = await client.get(hierarchy_url(private))
    checked(r, 401, "M_MISSING_TOKEN", documented=False)
