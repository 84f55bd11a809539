"""Sliding sync (MSC4186): required_state, filters, room subscriptions, long-poll, restarts."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from homeserver.core.clock import FakeClock
from homeserver.core.config import HomeserverConfig
from tests.api.sliding_helpers import bodies, ids, post, put, room_list, send, sliding
from tests.helpers import create_room, register, serve


def _state(room: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in room.get("required_state", [])}


async def test_required_state_wildcards_me_and_lazy(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    carol, carol_token = await register(client, "carol")
    room = await create_room(client, alice_token, name="Lobby", topic="chat", invite=[bob, carol])
    await post(client, bob_token, f"/join/{room}", {})
    await post(client, carol_token, f"/join/{room}", {})
    await send(client, bob_token, room, "from bob")

    def ask(*pairs: list[str], limit: int = 1) -> dict[str, Any]:
        return {
            "room_subscriptions": {room: {"timeline_limit": limit, "required_state": list(pairs)}}
        }

    everything = (await sliding(client, alice_token, ask(["*", "*"])))["rooms"][room]
    assert {("m.room.create", ""), ("m.room.topic", ""), ("m.room.member", carol)} <= _state(
        everything
    )
    me = (await sliding(client, alice_token, ask(["m.room.member", "$ME"])))["rooms"][room]
    assert _state(me) == {("m.room.member", alice)}
    # $LAZY: only the timeline's senders (bob), not every member.
    lazy = (await sliding(client, alice_token, ask(["m.room.member", "$LAZY"])))["rooms"][room]
    assert _state(lazy) == {("m.room.member", bob)}
    by_type = (await sliding(client, alice_token, ask(["m.room.member", "*"])))["rooms"][room]
    assert _state(by_type) == {("m.room.member", u) for u in (alice, bob, carol)}
    by_key = (await sliding(client, alice_token, ask(["*", ""])))["rooms"][room]
    assert ("m.room.name", "") in _state(by_key)
    assert not any(t == "m.room.member" for t, _ in _state(by_key))


async def test_incremental_required_state_and_lazy_members(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    carol, carol_token = await register(client, "carol")
    room = await create_room(client, alice_token, name="Old", invite=[bob, carol])
    await post(client, bob_token, f"/join/{room}", {})
    await post(client, carol_token, f"/join/{room}", {})
    request = {
        "lists": {
            "all": room_list(
                timeline_limit=1,
                required_state=[["m.room.name", ""], ["m.room.member", "$LAZY"]],
            )
        }
    }
    first = await sliding(client, alice_token, request)
    assert ("m.room.member", carol) in _state(first["rooms"][room])  # the timeline's sender
    assert ("m.room.member", bob) not in _state(first["rooms"][room])
    await send(client, bob_token, room, "hi")
    second = await sliding(client, alice_token, request, pos=first["pos"])
    # Bob's member event comes with his first message, once.
    assert _state(second["rooms"][room]) == {("m.room.member", bob)}
    await send(client, bob_token, room, "again")
    third = await sliding(client, alice_token, request, pos=second["pos"])
    assert "required_state" not in third["rooms"][room]
    # A renamed room: the new name, in the room's name and (limited timeline) its state.
    await put(client, alice_token, f"/rooms/{room}/state/m.room.name/", {"name": "New"})
    await send(client, bob_token, room, "after rename")
    fourth = await sliding(client, alice_token, request, pos=third["pos"])
    renamed = fourth["rooms"][room]
    assert renamed["name"] == "New"
    assert renamed["limited"] is True
    assert [e["content"]["name"] for e in renamed["required_state"]] == ["New"]


async def test_required_state_grows_for_a_room_already_sent(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token, topic="tea")
    narrow = {"lists": {"all": room_list(required_state=[["m.room.create", ""]])}}
    first = await sliding(client, token, narrow)
    assert _state(first["rooms"][room]) == {("m.room.create", "")}
    wide = {
        "lists": {"all": room_list(required_state=[["m.room.create", ""], ["m.room.topic", ""]])}
    }
    second = await sliding(client, token, wide, pos=first["pos"])
    assert ("m.room.topic", "") in _state(second["rooms"][room])
    assert "initial" not in second["rooms"][room]


async def test_filters(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    plain = await create_room(client, alice_token)
    encrypted = await create_room(
        client,
        alice_token,
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ],
    )
    space = await create_room(client, alice_token, creation_content={"type": "m.space"})
    dm = await create_room(client, bob_token, invite=[alice], is_direct=True)
    await post(client, alice_token, f"/join/{dm}", {})
    invited = await create_room(client, bob_token, invite=[alice])
    await put(client, alice_token, f"/user/{alice}/account_data/m.direct", {bob: [dm]})
    await put(
        client,
        alice_token,
        f"/rooms/{space}/state/m.space.child/{plain}",
        {"via": ["test"]},
    )
    lists = {
        "dms": room_list(is_dm=True),
        "not_dms": room_list(is_dm=False),
        "encrypted": room_list(is_encrypted=True),
        "clear": room_list(is_encrypted=False, is_invite=False),
        "invites": room_list(is_invite=True),
        "spaces": room_list(room_types=["m.space"]),
        "untyped": room_list(room_types=[None], is_invite=False),
        "not_spaces": room_list(not_room_types=["m.space"], is_invite=False),
        "in_space": room_list(spaces=[space]),
    }
    body = await sliding(client, alice_token, {"lists": lists})
    assert set(ids(body, "dms")) == {dm}
    assert set(ids(body, "not_dms")) == {plain, encrypted, space, invited}
    assert set(ids(body, "encrypted")) == {encrypted}
    assert set(ids(body, "clear")) == {plain, space, dm}
    assert set(ids(body, "invites")) == {invited}
    assert set(ids(body, "spaces")) == {space}
    assert set(ids(body, "untyped")) == {plain, encrypted, dm}
    assert set(ids(body, "not_spaces")) == {plain, encrypted, dm}
    assert set(ids(body, "in_space")) == {plain}
    assert body["rooms"][dm]["is_dm"] is True
    assert "is_dm" not in body["rooms"][plain]
    assert body["lists"]["dms"]["count"] == 1


async def test_room_subscriptions(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    old = await create_room(client, token, name="Old")
    await create_room(client, token)
    elsewhere = await create_room(client, bob_token)  # not alice's: left out
    request = {
        "lists": {"all": room_list([[0, 0]])},
        "room_subscriptions": {
            old: {"timeline_limit": 2, "required_state": [["m.room.name", ""]]},
            elsewhere: {"timeline_limit": 2, "required_state": []},
        },
    }
    first = await sliding(client, token, request)
    assert old not in ids(first)
    assert first["rooms"][old]["name"] == "Old"
    assert elsewhere not in first["rooms"]
    await send(client, token, old, "watched")
    second = await sliding(client, token, request, pos=first["pos"])
    assert bodies(second["rooms"][old]) == ["watched"]


async def test_heroes_of_a_room_without_name(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    await put(client, bob_token, f"/profile/{bob}/displayname", {"displayname": "Bobby"})
    room = await create_room(client, token, invite=[bob])
    await post(client, bob_token, f"/join/{room}", {})
    body = await sliding(client, token, {"lists": {"all": room_list()}})
    entry = body["rooms"][room]
    assert "name" not in entry
    assert entry["heroes"] == [{"user_id": bob, "displayname": "Bobby"}]
    assert entry["joined_count"] == 2


async def test_heroes_of_an_invite_come_from_its_stripped_state(
    client: httpx.AsyncClient,
) -> None:
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    await put(client, bob_token, f"/profile/{bob}/displayname", {"displayname": "Bobby"})
    await put(client, bob_token, f"/profile/{bob}/avatar_url", {"avatar_url": "mxc://test/b"})
    room = await create_room(client, bob_token, invite=[alice])
    named = await create_room(client, bob_token, invite=[alice], name="Named")
    body = await sliding(client, token, {"lists": {"all": room_list()}})
    entry = body["rooms"][room]
    assert entry["heroes"] == [
        {"user_id": bob, "displayname": "Bobby", "avatar_url": "mxc://test/b"}
    ]
    members = {
        e["state_key"]: e["content"]["membership"]
        for e in entry["invite_state"]
        if e["type"] == "m.room.member"
    }
    assert members == {alice: "invite", bob: "join"}
    assert body["rooms"][named]["name"] == "Named"
    assert "heroes" not in body["rooms"][named]


async def test_long_poll_wakes_on_a_message(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    request = {"lists": {"all": room_list(timeline_limit=5)}}
    first = await sliding(client, token, request)
    waiting = asyncio.create_task(sliding(client, token, request, pos=first["pos"], timeout=30_000))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await send(client, token, room, "live")
    body = await asyncio.wait_for(waiting, 10)
    assert bodies(body["rooms"][room]) == ["live"]


async def test_long_poll_times_out_empty_and_keeps_the_position(
    client: httpx.AsyncClient,
) -> None:
    _, token = await register(client, "alice")
    await create_room(client, token)
    request = {"lists": {"all": room_list()}}
    first = await sliding(client, token, request)
    body = await sliding(client, token, request, pos=first["pos"], timeout=50)
    assert body["rooms"] == {}
    assert body["lists"]["all"]["count"] == 1
    assert body["pos"].split("/")[0] == first["pos"].split("/")[0]


async def test_a_connection_survives_a_restart(config: HomeserverConfig) -> None:
    request = {"conn_id": "main", "lists": {"all": room_list(timeline_limit=5)}}
    async with serve(config, FakeClock()) as (_, client):
        _, token = await register(client, "alice")
        room = await create_room(client, token)
        quiet = await create_room(client, token)
        first = await sliding(client, token, request)
        assert set(first["rooms"]) == {room, quiet}
    async with serve(config, FakeClock()) as (_, client):
        await send(client, token, room, "after restart")
        second = await sliding(client, token, request, pos=first["pos"])
        assert set(second["rooms"]) == {room}
        assert bodies(second["rooms"][room]) == ["after restart"]
        assert "initial" not in second["rooms"][room]


async def test_connections_are_separate(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    one = await sliding(client, token, {"conn_id": "one", "lists": {"all": room_list()}})
    two = await sliding(client, token, {"conn_id": "two", "lists": {"all": room_list()}})
    await send(client, token, room, "both")
    for conn_id, pos in (("one", one["pos"]), ("two", two["pos"])):
        body = await sliding(
            client, token, {"conn_id": conn_id, "lists": {"all": room_list()}}, pos=pos
        )
        assert bodies(body["rooms"][room]) == ["both"]


async def test_counts_follow_messages_and_read_receipts(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, alice_token, invite=[bob])
    await post(client, bob_token, f"/join/{room}", {})
    request = {"lists": {"all": room_list(timeline_limit=1)}}
    first = await sliding(client, alice_token, request)
    event_id = await send(client, bob_token, room, "unread")
    second = await sliding(client, alice_token, request, pos=first["pos"])
    assert second["rooms"][room]["notification_count"] == 1
    await post(client, alice_token, f"/rooms/{room}/receipt/m.read/{event_id}", {})
    third = await sliding(client, alice_token, request, pos=second["pos"], timeout=1000)
    assert third["rooms"][room]["notification_count"] == 0
    assert "timeline" not in third["rooms"][room]


async def test_ignored_users_are_hidden(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, alice_token, invite=[bob])
    await post(client, bob_token, f"/join/{room}", {})
    await put(
        client,
        alice_token,
        f"/user/{alice}/account_data/m.ignored_user_list",
        {"ignored_users": {bob: {}}},
    )
    await send(client, bob_token, room, "shh")
    await create_room(client, bob_token, invite=[alice])
    body = await sliding(client, alice_token, {"lists": {"all": room_list(timeline_limit=5)}})
    assert ids(body) == [room]
    assert bodies(body["rooms"][room]) == []


async def test_longer_timeline_for_a_room_already_sent(client: httpx.AsyncClient) -> None:
    """As Element X opens a room from its list: a subscription with a longer timeline gets
    the room's newest events again, flagged as an expanded timeline (Synapse's behaviour)."""
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    for text in ("a", "b", "c"):
        await send(client, token, room, text)
    listing = {"lists": {"all": room_list(timeline_limit=1)}}
    first = await sliding(client, token, listing)
    assert bodies(first["rooms"][room]) == ["c"]
    opened = {**listing, "room_subscriptions": {room: {"timeline_limit": 3, "required_state": []}}}
    second = await sliding(client, token, opened, pos=first["pos"])
    entry = second["rooms"][room]
    assert bodies(entry) == ["a", "b", "c"]
    assert entry["unstable_expanded_timeline"] is True
    assert "initial" not in entry
    third = await sliding(client, token, opened, pos=second["pos"])
    assert third["rooms"] == {}
