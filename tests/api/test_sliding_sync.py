"""Simplified sliding sync (MSC4186): lists, windows, room fields, incremental rules."""

from __future__ import annotations

import asyncio

import httpx

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.ids import UserID
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.api.sliding_helpers import bodies, ids, post, room_list, send, sliding
from tests.helpers import create_room, register

ROOM_COUNT = 1000
BATCH = 50


async def test_versions_advertise_sliding_sync(client: httpx.AsyncClient) -> None:
    r = await client.get("/_matrix/client/versions")
    assert r.json()["unstable_features"]["org.matrix.simplified_msc3575"] is True


async def test_initial_list_sorted_by_activity(client: httpx.AsyncClient) -> None:
    alice, token = await register(client, "alice")
    first = await create_room(client, token, name="First")
    second = await create_room(client, token, name="Second")
    await send(client, token, first, "hello")
    body = await sliding(
        client,
        token,
        {"lists": {"all": room_list(timeline_limit=2, required_state=[["m.room.name", ""]])}},
    )
    assert body["lists"]["all"]["count"] == 2
    assert ids(body) == [first, second]
    room = body["rooms"][first]
    assert room["initial"] is True
    assert room["name"] == "First"
    assert bodies(room) == ["hello"]
    assert len(room["timeline"]) == 2
    assert room["limited"] is True
    assert room["joined_count"] == 1 and room["invited_count"] == 0
    assert room["notification_count"] == 0 and room["highlight_count"] == 0
    assert room["bump_stamp"] > body["rooms"][second]["bump_stamp"]
    assert [e["type"] for e in room["required_state"]] == ["m.room.name"]
    assert isinstance(room["prev_batch"], str)
    assert all("room_id" not in e for e in room["timeline"])


async def test_incremental_sends_only_changes(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    quiet = await create_room(client, token)
    busy = await create_room(client, token)
    request = {"lists": {"all": room_list(timeline_limit=5)}}
    first = await sliding(client, token, request)
    await send(client, token, busy, "news")
    second = await sliding(client, token, request, pos=first["pos"])
    assert set(second["rooms"]) == {busy}
    room = second["rooms"][busy]
    assert "initial" not in room
    assert bodies(room) == ["news"]
    assert room["num_live"] == 1
    assert room["limited"] is False
    assert ids(second) == [busy, quiet]
    third = await sliding(client, token, request, pos=second["pos"])
    assert third["rooms"] == {}


async def test_room_moves_up_when_a_message_arrives(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    rooms = [await create_room(client, token) for _ in range(3)]
    request = {"lists": {"all": room_list([[0, 1]], timeline_limit=3)}}
    first = await sliding(client, token, request)
    assert ids(first) == [rooms[2], rooms[1]]
    assert first["lists"]["all"]["count"] == 3
    await send(client, token, rooms[0], "wake up")
    second = await sliding(client, token, request, pos=first["pos"])
    assert ids(second) == [rooms[0], rooms[2]]
    # Never sent before: from scratch, its newest events (the message is live).
    room = second["rooms"][rooms[0]]
    assert room["initial"] is True
    assert bodies(room) == ["wake up"]
    assert room["num_live"] == 1
    assert set(second["rooms"]) == {rooms[0]}


async def test_room_out_of_the_window_comes_back_with_what_it_missed(
    client: httpx.AsyncClient,
) -> None:
    _, token = await register(client, "alice")
    old = await create_room(client, token)
    new = await create_room(client, token)
    request = {"lists": {"all": room_list([[0, 0]], timeline_limit=10)}}
    # Both rooms sent once (the window first shows ``new``, then ``old``).
    first = await sliding(client, token, request)
    assert ids(first) == [new]
    await send(client, token, old, "one")
    second = await sliding(client, token, request, pos=first["pos"])
    assert ids(second) == [old] and second["rooms"][old]["initial"] is True
    # ``new`` gets events while out of the window; ``old`` gets more, staying on top.
    await send(client, token, new, "missed-1")
    await send(client, token, old, "two")
    third = await sliding(client, token, request, pos=second["pos"])
    assert bodies(third["rooms"][old]) == ["two"]
    await send(client, token, new, "missed-2")
    fourth = await sliding(client, token, request, pos=third["pos"])
    # Back in view: everything since it was last sent, not from scratch, nothing twice.
    room = fourth["rooms"][new]
    assert "initial" not in room
    assert bodies(room) == ["missed-1", "missed-2"]
    assert room["num_live"] == 1
    assert room["limited"] is False


async def test_thousand_rooms_window_of_twenty(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    """A user in 1 000 rooms asks for the 20 most recent, then the next 20, then sees one
    room from the bottom of the list move to the top when a message arrives. The rooms are
    made through the services a room creation uses, 50 at a time, each with its create event
    and the creator's join only (1 000 full creates took minutes)."""
    alice, token = await register(client, "alice")
    user = UserID.parse(alice)
    version = KNOWN_ROOM_VERSIONS[hs.config.rooms.default_room_version]
    content: dict[str, str] = {"room_version": version.identifier}
    if version.creator_in_content:
        content["creator"] = alice

    async def bare_room(ts: int) -> str:
        room_id, pdu, event_id = hs.event_sender.build_create_event(version, alice, content, ts)
        assert await hs.room_store.create_room(room_id, version.identifier, alice, ts, False)
        await hs.event_sender.persist_create_event(room_id, pdu, event_id)
        await hs.memberships.send_own_membership(room_id, user, "join")
        return str(room_id)

    rooms: list[str] = []
    for _ in range(ROOM_COUNT // BATCH):
        now = clock.now_ms()
        rooms += await asyncio.gather(*(bare_room(now + i) for i in range(BATCH)))
        clock.advance(1000)
    for i, room_id in enumerate(rooms[:10]):
        await send(client, token, room_id, f"m{i}")
    request = {"lists": {"all": room_list([[0, 19]], timeline_limit=1)}}
    body = await sliding(client, token, request)
    assert body["lists"]["all"]["count"] == ROOM_COUNT
    top = ids(body)
    assert top[:10] == list(reversed(rooms[:10]))
    # The rest of the window: rooms of the newest batch (created in the same millisecond,
    # so in any order among themselves), none of those with a message.
    assert set(top[10:]) <= set(rooms[-BATCH:])
    assert len(set(top)) == 20 and set(body["rooms"]) == set(top)
    for room_id in top[:10]:
        assert bodies(body["rooms"][room_id]) == [f"m{rooms.index(room_id)}"]
    # The next window: 20 rooms more, none of the first 20 sent again.
    request = {"lists": {"all": room_list([[0, 19], [20, 39]], timeline_limit=1)}}
    more = await sliding(client, token, request, pos=body["pos"])
    assert len(more["rooms"]) == 20 and not set(more["rooms"]) & set(top)
    assert more["lists"]["all"]["count"] == ROOM_COUNT
    # A room at the bottom (created first among those without a message) gets one: it is
    # first in the list and the only room in the response.
    bottom = rooms[10]
    event_id = await send(client, token, bottom, "up")
    moved = await sliding(client, token, request, pos=more["pos"])
    assert ids(moved)[0] == bottom
    assert list(moved["rooms"]) == [bottom]
    assert [e["event_id"] for e in moved["rooms"][bottom]["timeline"]] == [event_id]


async def test_unknown_pos_starts_over(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    await create_room(client, token)
    request = {"conn_id": "main", "lists": {"all": room_list()}}
    first = await sliding(client, token, request)
    token_part = first["pos"].split("/", 1)[1]
    for pos in (f"999999/{token_part}", first["pos"]):
        body = {**request, "conn_id": "other"} if pos == first["pos"] else request
        error = await sliding(client, token, body, pos=pos, status=400)
        assert error["errcode"] == "M_UNKNOWN_POS"
    # Another user's position is unknown to this one too.
    _, bob = await register(client, "bob")
    error = await sliding(client, bob, request, pos=first["pos"], status=400)
    assert error["errcode"] == "M_UNKNOWN_POS"
    # Starting over (no pos) drops the connection's positions.
    await sliding(client, token, request)
    error = await sliding(client, token, request, pos=first["pos"], status=400)
    assert error["errcode"] == "M_UNKNOWN_POS"


async def test_retrying_a_position_gives_the_same_delta(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    room = await create_room(client, token)
    request = {"lists": {"all": room_list(timeline_limit=5)}}
    first = await sliding(client, token, request)
    await send(client, token, room, "once")
    second = await sliding(client, token, request, pos=first["pos"])
    retried = await sliding(client, token, request, pos=first["pos"])  # response was lost
    assert bodies(second["rooms"][room]) == bodies(retried["rooms"][room]) == ["once"]
    # Building on the newer position drops the older one.
    await send(client, token, room, "twice")
    await sliding(client, token, request, pos=retried["pos"])
    error = await sliding(client, token, request, pos=first["pos"], status=400)
    assert error["errcode"] == "M_UNKNOWN_POS"


async def test_invite_appears_then_disappears(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    mine = await create_room(client, alice_token)
    request = {
        "lists": {
            "all": room_list(timeline_limit=5),
            "invites": room_list(is_invite=True),
        }
    }
    first = await sliding(client, alice_token, request)
    assert first["lists"]["invites"]["count"] == 0
    room = await create_room(client, bob_token, name="Bob's", invite=[alice])
    second = await sliding(client, alice_token, request, pos=first["pos"])
    assert ids(second, "invites") == [room]
    assert ids(second, "all") == [room, mine]
    invite = second["rooms"][room]
    assert invite["initial"] is True
    assert invite["name"] == "Bob's"
    types = {e["type"] for e in invite["invite_state"]}
    assert {"m.room.create", "m.room.member", "m.room.name"} <= types
    assert "timeline" not in invite
    # Rejected: the room shows its leave once, then is gone from the lists.
    await post(client, alice_token, f"/rooms/{room}/leave", {})
    third = await sliding(client, alice_token, request, pos=second["pos"])
    assert third["lists"]["invites"]["count"] == 0
    left = third["rooms"][room]
    assert [e["content"]["membership"] for e in left["timeline"]] == ["leave"]
    fourth = await sliding(client, alice_token, request, pos=third["pos"])
    assert ids(fourth, "all") == [mine]
    assert room not in fourth["rooms"]


async def test_invite_then_join_sends_the_room_from_scratch(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    _, bob_token = await register(client, "bob")
    room = await create_room(client, bob_token, invite=[alice])
    await send(client, bob_token, room, "before")
    request = {"lists": {"all": room_list(timeline_limit=20)}}
    first = await sliding(client, alice_token, request)
    assert "timeline" not in first["rooms"][room]
    await post(client, alice_token, f"/join/{room}", {})
    second = await sliding(client, alice_token, request, pos=first["pos"])
    joined = second["rooms"][room]
    assert joined["initial"] is True
    assert "before" in bodies(joined)
    assert joined["joined_count"] == 2
    assert "invite_state" not in joined
