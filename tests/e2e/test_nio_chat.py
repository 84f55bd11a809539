"""Two and more people chat through a real server, with matrix-nio as their client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nio
import pytest

from tests.e2e.conftest import ServerProcess

PASSWORD = "correct horse battery"


async def _client(server: ServerProcess, name: str) -> nio.AsyncClient:
    config = nio.AsyncClientConfig(max_timeouts=3, request_timeout=30)
    client = nio.AsyncClient(server.base_url, config=config)
    response = await client.register(name, PASSWORD, device_name=f"{name}'s phone")
    assert isinstance(response, nio.RegisterResponse), response
    return client


@pytest.fixture
async def people(server: ServerProcess) -> AsyncIterator[dict[str, nio.AsyncClient]]:
    clients = {name: await _client(server, name) for name in ("alice", "bob", "carol", "dan")}
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.close()


async def _wait_for_message(
    client: nio.AsyncClient, room_id: str, body: str, timeout_s: float = 20
) -> nio.RoomMessageText:
    """Long-poll sync until ``body`` arrives in ``room_id``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        response = await client.sync(timeout=5000)
        assert isinstance(response, nio.SyncResponse), response
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, nio.RoomMessageText) and event.body == body:
                return event
    raise AssertionError(f"{client.user_id} never received {body!r}")


async def _accept_invite(client: nio.AsyncClient, room_id: str) -> None:
    for _ in range(10):
        response = await client.sync(timeout=5000)
        assert isinstance(response, nio.SyncResponse), response
        if room_id in response.rooms.invite:
            break
    else:
        raise AssertionError(f"{client.user_id} never saw the invite to {room_id}")
    joined = await client.join(room_id)
    assert isinstance(joined, nio.JoinResponse), joined


async def test_direct_message_both_ways(people: dict[str, nio.AsyncClient]) -> None:
    alice, bob = people["alice"], people["bob"]
    created = await alice.room_create(
        is_direct=True, invite=[bob.user_id], preset=nio.RoomPreset.trusted_private_chat
    )
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    await alice.sync(timeout=0)
    await _accept_invite(bob, room_id)

    sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi Bob"})
    assert isinstance(sent, nio.RoomSendResponse), sent
    received = await _wait_for_message(bob, room_id, "hi Bob")
    assert received.sender == alice.user_id
    assert received.event_id == sent.event_id

    reply = await bob.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": "hi Alice"}
    )
    assert isinstance(reply, nio.RoomSendResponse), reply
    got = await _wait_for_message(alice, room_id, "hi Alice")
    assert got.sender == bob.user_id
    # nio built the room from our sync: both are members, and it is the DM we made.
    assert set(alice.rooms[room_id].users) == {alice.user_id, bob.user_id}


async def test_group_room_everyone_receives(people: dict[str, nio.AsyncClient]) -> None:
    alice = people["alice"]
    others = [people["bob"], people["carol"], people["dan"]]
    created = await alice.room_create(name="Team", invite=[c.user_id for c in others])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    await alice.sync(timeout=0)
    for client in others:
        await _accept_invite(client, room_id)

    # Everyone is already waiting in a long-poll when the message is sent.
    waiting = [asyncio.create_task(_wait_for_message(c, room_id, "standup in 5")) for c in others]
    await asyncio.sleep(0.2)
    sent = await alice.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": "standup in 5"}
    )
    assert isinstance(sent, nio.RoomSendResponse), sent
    for event in await asyncio.gather(*waiting):
        assert event.event_id == sent.event_id

    # And a reply from one reaches the others, the sender included.
    reply = await people["carol"].room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": "on my way"}
    )
    assert isinstance(reply, nio.RoomSendResponse), reply
    for client in (alice, people["bob"], people["dan"]):
        await _wait_for_message(client, room_id, "on my way")
    assert alice.rooms[room_id].display_name == "Team"
    assert len(alice.rooms[room_id].users) == 4
