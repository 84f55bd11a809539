"""End-to-end encryption through a real server, with matrix-nio's crypto (vodozemac) as the
client: Olm sessions from claimed one-time keys, Megolm room keys over to-device messages,
device lists in sync, room keys forwarded between a user's own devices, and SAS verification."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nio
import pytest
from nio.crypto.sas import SasState

from tests.e2e.conftest import ServerProcess

PASSWORD = "correct horse battery"
ENCRYPTION = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}
# A timeline long enough for the whole (short) history of the test room.
LONG_TIMELINE = {"room": {"timeline": {"limit": 50}}}
ROUNDS = 20


class People:
    """Encrypting nio clients, each with its own store under the test's tmp_path."""

    def __init__(self, server: ServerProcess, tmp_path: Path) -> None:
        self._server = server
        self.base_url = server.base_url
        self._tmp_path = tmp_path
        self.clients: list[nio.AsyncClient] = []

    def _new(self, name: str) -> nio.AsyncClient:
        store = self._tmp_path / f"store-{name}-{len(self.clients)}"
        store.mkdir()
        config = nio.AsyncClientConfig(
            max_timeouts=3, store_sync_tokens=False, encryption_enabled=True
        )
        client = nio.AsyncClient(self._server.base_url, store_path=str(store), config=config)
        self.clients.append(client)
        return client

    async def register(self, name: str) -> nio.AsyncClient:
        client = self._new(name)
        response = await client.register(name, PASSWORD, device_name=f"{name}'s laptop")
        assert isinstance(response, nio.RegisterResponse), response
        await step(client)
        return client

    async def login(self, name: str) -> nio.AsyncClient:
        """Another device of an existing user."""
        client = self._new(name)
        client.user = f"@{name}:localhost"
        response = await client.login(PASSWORD, device_name=f"{name}'s new phone")
        assert isinstance(response, nio.LoginResponse), response
        await step(client)
        return client


@pytest.fixture
async def people(server: ServerProcess, tmp_path: Path) -> AsyncIterator[People]:
    crowd = People(server, tmp_path)
    try:
        yield crowd
    finally:
        for client in crowd.clients:
            await client.close()


async def step(
    client: nio.AsyncClient, timeout_ms: int = 0, sync_filter: dict[str, Any] | None = None
) -> nio.SyncResponse:
    """One round of what ``sync_forever`` does: sync, then send, upload, query, claim."""
    response = await client.sync(timeout=timeout_ms, sync_filter=sync_filter)
    assert isinstance(response, nio.SyncResponse), response
    sent = await client.send_to_device_messages()
    assert all(isinstance(r, nio.ToDeviceResponse) for r in sent), sent
    if client.should_upload_keys:
        assert isinstance(await client.keys_upload(), nio.KeysUploadResponse)
    if client.should_query_keys:
        assert isinstance(await client.keys_query(), nio.KeysQueryResponse)
    if client.should_claim_keys:
        claimed = await client.keys_claim(client.get_users_for_key_claiming())
        assert isinstance(claimed, nio.KeysClaimResponse), claimed
    return response


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(ROUNDS):
        if await check():
            return
    raise AssertionError(f"never happened: {what}")


async def create_encrypted_room(creator: nio.AsyncClient, *members: nio.AsyncClient) -> str:
    created = await creator.room_create(
        invite=[m.user_id for m in members], initial_state=[ENCRYPTION]
    )
    assert isinstance(created, nio.RoomCreateResponse), created
    for member in members:
        await join(member, created.room_id)
    await step(creator)
    return str(created.room_id)


async def join(client: nio.AsyncClient, room_id: str) -> None:
    async def invited() -> bool:
        return room_id in (await step(client, 500)).rooms.invite

    await until(f"{client.user_id} is invited to {room_id}", invited)
    joined = await client.join(room_id)
    assert isinstance(joined, nio.JoinResponse), joined
    await step(client)


async def send(client: nio.AsyncClient, room_id: str, body: str) -> str:
    # Let the sender see the latest memberships and device lists first, as sync_forever does.
    await step(client)
    sent = await client.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": body},
        ignore_unverified_devices=True,
    )
    assert isinstance(sent, nio.RoomSendResponse), sent
    return str(sent.event_id)


async def receive(
    client: nio.AsyncClient, room_id: str, event_id: str, sync_filter: dict[str, Any] | None = None
) -> nio.Event:
    """Sync until ``event_id`` arrives in ``room_id``; the event as nio made it of it."""
    found: list[nio.Event] = []

    async def arrived() -> bool:
        response = await step(client, 500, sync_filter)
        room = response.rooms.join.get(room_id)
        found.extend(e for e in (room.timeline.events if room else []) if e.event_id == event_id)
        return bool(found)

    await until(f"{client.user_id} receives {event_id}", arrived)
    return found[0]


async def test_exchange_and_late_joiner(people: People) -> None:
    alice = await people.register("alice")
    bob = await people.register("bob")
    room_id = await create_encrypted_room(alice, bob)
    assert alice.rooms[room_id].encrypted

    first = await send(alice, room_id, "hi Bob, this is secret")
    got = await receive(bob, room_id, first)
    assert isinstance(got, nio.RoomMessageText), got
    assert got.body == "hi Bob, this is secret"
    assert got.decrypted and got.sender == alice.user_id

    reply = await send(bob, room_id, "hi Alice, secret too")
    got = await receive(alice, room_id, reply)
    assert isinstance(got, nio.RoomMessageText), got
    assert got.body == "hi Alice, secret too"
    assert got.decrypted

    # What the server stored is ciphertext only.
    async with httpx.AsyncClient(base_url=people.base_url) as http:
        r = await http.get(
            f"/_matrix/client/v3/rooms/{room_id}/event/{first}",
            headers={"Authorization": f"Bearer {bob.access_token}"},
        )
    assert r.status_code == 200 and r.json()["type"] == "m.room.encrypted", r.text
    assert "secret" not in r.text

    # Carol joins later: she sees the earlier events, but cannot decrypt them.
    carol = await people.register("carol")
    invited = await alice.room_invite(room_id, carol.user_id)
    assert isinstance(invited, nio.RoomInviteResponse), invited
    await join(carol, room_id)
    after = await send(alice, room_id, "welcome Carol")
    got = await receive(carol, room_id, after, LONG_TIMELINE)
    assert isinstance(got, nio.RoomMessageText) and got.body == "welcome Carol", got
    old = await carol.room_get_event(room_id, first)
    assert isinstance(old, nio.RoomGetEventResponse), old
    assert isinstance(old.event, nio.MegolmEvent)  # nio decrypts what it can: not this
    old.event.room_id = room_id
    with pytest.raises(nio.EncryptionError):
        carol.decrypt_event(old.event)
    # And Bob still reads the new message as well.
    got = await receive(bob, room_id, after)
    assert isinstance(got, nio.RoomMessageText) and got.body == "welcome Carol", got


async def test_new_device_gets_forwarded_room_keys(people: People) -> None:
    alice = await people.register("alice")
    bob = await people.register("bob")
    room_id = await create_encrypted_room(alice, bob)
    before = await send(alice, room_id, "sent before Bob's new phone existed")
    got = await receive(bob, room_id, before)
    assert isinstance(got, nio.RoomMessageText), got

    phone = await people.login("bob")
    assert phone.device_id != bob.device_id

    # Both of Bob's devices learn of each other through device lists and /keys/query, and
    # trust each other (as a verification would make them).
    async def knows(client: nio.AsyncClient, device_id: str) -> bool:
        await step(client, 500)
        return device_id in client.device_store[bob.user_id]

    await until("Bob's laptop sees the phone", lambda: knows(bob, phone.device_id))
    await until("Bob's phone sees the laptop", lambda: knows(phone, bob.device_id))
    bob.verify_device(bob.device_store[bob.user_id][phone.device_id])
    phone.verify_device(phone.device_store[bob.user_id][bob.device_id])

    # Alice is told through device lists that Bob has a new device: her next message is
    # shared with it directly.
    await until("Alice sees Bob's phone", lambda: knows(alice, phone.device_id))
    after = await send(alice, room_id, "sent after Bob's new phone appeared")
    got = await receive(phone, room_id, after)
    assert isinstance(got, nio.RoomMessageText), got
    assert got.body == "sent after Bob's new phone appeared"

    # The older message: the phone has no key for it, asks Bob's other devices, and the
    # laptop forwards the room key through an Olm-encrypted to-device message.
    old = await phone.room_get_event(room_id, before)
    assert isinstance(old, nio.RoomGetEventResponse), old
    assert isinstance(old.event, nio.MegolmEvent)
    old.event.room_id = room_id
    requested = await phone.request_room_key(old.event)
    assert isinstance(requested, nio.RoomKeyRequestResponse), requested

    async def forwarded() -> bool:
        await step(bob, 200)
        await step(phone, 200)
        return old.event.session_id not in phone.outgoing_key_requests

    await until("the laptop forwards the room key to the phone", forwarded)
    decrypted = phone.decrypt_event(old.event)
    assert isinstance(decrypted, nio.RoomMessageText), decrypted
    assert decrypted.body == "sent before Bob's new phone existed"


async def test_one_time_keys_are_replenished(people: People) -> None:
    """Claims use up one-time keys; sync tells the device, which uploads new ones."""
    alice = await people.register("alice")
    bob = await people.register("bob")
    assert bob.olm is not None
    uploaded = bob.olm.uploaded_key_count
    assert uploaded is not None and uploaded > 0
    claimed = await alice.keys_claim({bob.user_id: [bob.device_id]})
    assert isinstance(claimed, nio.KeysClaimResponse), claimed
    assert list(claimed.one_time_keys[bob.user_id]) == [bob.device_id]
    response = await step(bob)  # sees one key fewer, and uploads a new one
    assert response.device_key_count.signed_curve25519 == uploaded - 1
    response = await step(bob)
    assert response.device_key_count.signed_curve25519 == uploaded


async def test_sas_verification_over_to_device(people: People) -> None:
    """Alice and Bob verify each other's devices (emoji SAS), all through to-device messages."""
    alice = await people.register("alice")
    bob = await people.register("bob")
    await create_encrypted_room(alice, bob)

    async def knows(client: nio.AsyncClient, other: nio.AsyncClient) -> bool:
        await step(client, 500)
        return other.device_id in client.device_store[other.user_id]

    await until("Alice knows Bob's device", lambda: knows(alice, bob))
    await until("Bob knows Alice's device", lambda: knows(bob, alice))
    bob_device = alice.device_store[bob.user_id][bob.device_id]
    alice_device = bob.device_store[alice.user_id][alice.device_id]
    started = await alice.start_key_verification(bob_device)
    assert isinstance(started, nio.ToDeviceResponse), started

    transactions: list[str] = []

    async def bob_sees_start() -> bool:
        response = await step(bob, 500)
        transactions.extend(
            e.transaction_id
            for e in response.to_device_events
            if isinstance(e, nio.KeyVerificationStart)
        )
        return bool(transactions)

    await until("Bob receives the verification request", bob_sees_start)
    txn = transactions[0]
    accepted = await bob.accept_key_verification(txn)
    assert isinstance(accepted, nio.ToDeviceResponse), accepted

    async def keys_exchanged() -> bool:
        await step(alice, 200)
        await step(bob, 200)
        return all(c.key_verifications[txn].state == SasState.key_received for c in (alice, bob))

    await until("the SAS keys are exchanged", keys_exchanged)
    emoji = alice.key_verifications[txn].get_emoji()
    assert len(emoji) == 7 and emoji == bob.key_verifications[txn].get_emoji()
    for client in (alice, bob):
        confirmed = await client.confirm_short_auth_string(txn)
        assert isinstance(confirmed, nio.ToDeviceResponse), confirmed

    async def verified() -> bool:
        await step(alice, 200)
        await step(bob, 200)
        return (
            alice.olm is not None
            and bob.olm is not None
            and alice.olm.is_device_verified(bob_device)
            and bob.olm.is_device_verified(alice_device)
        )

    await until("both devices are verified", verified)
