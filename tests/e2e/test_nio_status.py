"""Typing, receipts, unread counts and presence through a real server, with matrix-nio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import nio
import pytest

from tests.e2e.conftest import ServerProcess

PASSWORD = "correct horse battery"


async def _client(server: ServerProcess, name: str) -> nio.AsyncClient:
    config = nio.AsyncClientConfig(max_timeouts=3, request_timeout=30)
    client = nio.AsyncClient(server.base_url, config=config)
    response = await client.register(name, PASSWORD, device_name=f"{name}'s laptop")
    assert isinstance(response, nio.RegisterResponse), response
    return client


@pytest.fixture
async def pair(server: ServerProcess) -> AsyncIterator[tuple[nio.AsyncClient, nio.AsyncClient]]:
    alice, bob = await _client(server, "alice"), await _client(server, "bob")
    try:
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


async def _sync_until(
    client: nio.AsyncClient,
    what: str,
    check: Callable[[nio.SyncResponse], bool],
    timeout_s: float = 20,
) -> nio.SyncResponse:
    """Long-poll sync until ``check`` holds for a response."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        response = await client.sync(timeout=5000)
        assert isinstance(response, nio.SyncResponse), response
        if check(response):
            return response
    raise AssertionError(f"{client.user_id} never saw {what}")


def _ephemeral(response: nio.SyncResponse, room_id: str) -> list[object]:
    room = response.rooms.join.get(room_id)
    return list(room.ephemeral) if room else []


def _typing(response: nio.SyncResponse, room_id: str) -> list[list[str]]:
    return [e.users for e in _ephemeral(response, room_id) if isinstance(e, nio.TypingNoticeEvent)]


def _unread(response: nio.SyncResponse, room_id: str) -> int | None:
    room = response.rooms.join.get(room_id)
    if room is None or room.unread_notifications is None:
        return None
    count: int | None = room.unread_notifications.notification_count
    return count


async def test_typing_receipts_unread_counts_and_presence(
    pair: tuple[nio.AsyncClient, nio.AsyncClient],
) -> None:
    alice, bob = pair
    created = await alice.room_create(
        is_direct=True, invite=[bob.user_id], preset=nio.RoomPreset.trusted_private_chat
    )
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = created.room_id
    await alice.sync(timeout=0)
    await _sync_until(bob, "the invite", lambda r: room_id in r.rooms.invite)
    joined = await bob.join(room_id)
    assert isinstance(joined, nio.JoinResponse), joined
    await bob.sync(timeout=0)

    # Alice starts typing and stops; Bob sees both.
    typing = await alice.room_typing(room_id, True, timeout=30_000)
    assert isinstance(typing, nio.RoomTypingResponse), typing
    await _sync_until(bob, "alice typing", lambda r: [alice.user_id] in _typing(r, room_id))
    typing = await alice.room_typing(room_id, False)
    assert isinstance(typing, nio.RoomTypingResponse), typing
    await _sync_until(bob, "alice stop typing", lambda r: [] in _typing(r, room_id))

    # Bob writes; Alice has one unread message, reads it, and Bob sees her receipt.
    sent = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
    assert isinstance(sent, nio.RoomSendResponse), sent
    await _sync_until(alice, "one unread message", lambda r: _unread(r, room_id) == 1)
    marked = await alice.update_receipt_marker(room_id, sent.event_id)
    assert isinstance(marked, nio.UpdateReceiptMarkerResponse), marked

    def has_receipt(response: nio.SyncResponse) -> bool:
        return any(
            receipt.user_id == alice.user_id
            and receipt.event_id == sent.event_id
            and receipt.receipt_type == "m.read"
            for e in _ephemeral(response, room_id)
            if isinstance(e, nio.ReceiptEvent)
            for receipt in e.receipts
        )

    await _sync_until(bob, "alice's receipt", has_receipt)
    await _sync_until(alice, "no unread message", lambda r: _unread(r, room_id) == 0)

    # Alice is online (she syncs); then she goes offline and Bob sees it.
    def presence_of_alice(state: str) -> Callable[[nio.SyncResponse], bool]:
        return lambda r: any(
            e.user_id == alice.user_id and e.presence == state for e in r.presence_events
        )

    shown = await bob.get_presence(alice.user_id)
    assert isinstance(shown, nio.PresenceGetResponse), shown
    assert shown.presence == "online"
    offline = await alice.set_presence("offline")
    assert isinstance(offline, nio.PresenceSetResponse), offline
    await _sync_until(bob, "alice offline", presence_of_alice("offline"))
    shown = await bob.get_presence(alice.user_id)
    assert isinstance(shown, nio.PresenceGetResponse), shown
    assert shown.presence == "offline"
