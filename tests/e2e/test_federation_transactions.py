"""Transactions between two of our servers on loopback over TLS: once a user of each shares
a room, messages both ways, typing, read receipts, presence, to-device messages and device
list updates reach the other server's clients through PUT /send, sent by each server's
federation sender.

Joining a room across servers (make_join/send_join) is not on this branch: the shared room
is built as send_join would leave it. Bob's join (made and signed with B's key, from B's data
directory) reaches A in a transaction signed as B; B, stopped meanwhile, gets the room's
events through the receipt checks (``IncomingEvents``) on its own database, then restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from homeserver.core.clock import SystemClock
from homeserver.core.config import load_config
from homeserver.crypto.signing import load_or_create_signing_key
from homeserver.events.auth import auth_types_for_event
from homeserver.events.format import compute_event_id, hash_and_sign_event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.federation.client import FederationClient, ssl_context
from homeserver.federation.discovery import (
    DnsSrvLookup,
    HttpsWellKnownFetch,
    ServerResolver,
    WellKnownResolver,
)
from homeserver.federation.local_keys import LocalKeys
from homeserver.federation.policy import ServerPolicy
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound
from homeserver.rooms.incoming import IncomingEvents, Outcome
from homeserver.rooms.resolution import resolve_room_state
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.rooms import RoomStore
from homeserver.wakeups.bus import InMemoryBus
from homeserver.wakeups.notifier import Notifier
from tests.api.e2ee_helpers import Device
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_federation_two_servers import LOOPBACK, register, two_servers

__all__ = ["two_servers"]  # the fixture, shared with the key and request tests

V3 = "/_matrix/client/v3"


def client_of(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, verify=server.verify, timeout=20)


def call(server: ServerProcess, method: str, path: str, token: str, **kw: Any) -> Any:
    with client_of(server) as c:
        r = c.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def database_of(server: ServerProcess) -> Database:
    return Database(load_config(server.config_path).database_url)


async def room_events(server: ServerProcess, room_id: str) -> list[dict[str, Any]]:
    """The room's PDUs on a server, oldest first (its database, read while it runs)."""
    db = database_of(server)
    try:
        events = EventStore(db)
        found = await events.get_room_events(room_id, limit=1000, descending=False)
        return [e.pdu for e in found]
    finally:
        await db.close()


async def join_pdu(
    a: ServerProcess, room_id: str, user_id: str, server_name: str, key_dir: Path
) -> tuple[dict[str, Any], str]:
    """``user_id``'s join on A's room as their server would make it, signed with its key."""
    db = database_of(a)
    try:
        events, rooms = EventStore(db), RoomStore(db)
        room = await rooms.get_room(room_id)
        assert room is not None
        version = KNOWN_ROOM_VERSIONS[room.room_version]
        state = await events.get_current_state_ids(room_id)
        content = {"membership": "join"}
        wanted = auth_types_for_event(version, "m.room.member", user_id, user_id, content)
        heads = await events.get_forward_extremities(room_id)
        pdu: dict[str, Any] = {
            "room_id": room_id,
            "sender": user_id,
            "type": "m.room.member",
            "state_key": user_id,
            "content": content,
            "origin_server_ts": int(time.time() * 1000),
            "depth": max(e.depth for e in heads) + 1,
            "prev_events": [e.event_id for e in heads],
            "auth_events": [state[k] for k in wanted if k in state],
        }
    finally:
        await db.close()
    key = load_or_create_signing_key(key_dir / "data" / "signing.key")
    hash_and_sign_event(pdu, server_name, key, version)
    return pdu, compute_event_id(pdu, version)


async def send_as(
    tls_dir: Path, origin: str, origin_dir: Path, destination: str, body: dict[str, Any]
) -> Any:
    """PUT /send to ``destination`` as ``origin`` (its key, from its data directory)."""
    outbound = Outbound(AddressPolicy(LOOPBACK))
    tls = ssl_context(str(tls_dir / "ca.pem"))
    async with outbound.client(timeout_s=10, verify=tls) as wk_client:
        resolver = ServerResolver(
            WellKnownResolver(HttpsWellKnownFetch(wk_client), SystemClock()), DnsSrvLookup()
        )
        key = load_or_create_signing_key(origin_dir / "data" / "signing.key")
        local = LocalKeys(origin, key, {}, SystemClock(), 60_000)
        client = FederationClient(local, resolver, outbound, ServerPolicy(), tls=tls, timeout_s=10)
        try:
            return await client.request(
                destination, "PUT", f"/_matrix/federation/v1/send/join-{time.time()}", content=body
            )
        finally:
            await client.aclose()


async def copy_room(
    pdus: list[dict[str, Any]], room_id: str, version: str, b: ServerProcess
) -> None:
    """What send_join leaves on the joining server: the room and its events."""
    db = database_of(b)
    try:
        events, rooms = EventStore(db), RoomStore(db)
        creator = pdus[0]["sender"]
        await rooms.create_room(room_id, version, creator, pdus[0]["origin_server_ts"], True)
        pipeline = IncomingEvents(
            events, rooms, Notifier(InMemoryBus()), resolve=resolve_room_state
        )
        for pdu in pdus:
            [received] = await pipeline.receive(room_id, [pdu], int(time.time() * 1000))
            assert received.outcome is Outcome.ACCEPTED, received
    finally:
        await db.close()


def wait_for(
    server: ServerProcess, token: str, found: Callable[[dict[str, Any]], bool], since: str
) -> tuple[dict[str, Any], str]:
    """Long-poll /sync until ``found`` holds for a response (20 s at most)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = call(server, "GET", f"{V3}/sync", token, params={"since": since, "timeout": 2000})
        since = data["next_batch"]
        if found(data):
            return data, since
    raise AssertionError("not seen in time")


def whoami(server: ServerProcess, token: str) -> dict[str, Any]:
    result: dict[str, Any] = call(server, "GET", f"{V3}/account/whoami", token)
    return result


def test_messages_and_edus_flow_between_two_servers(
    two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    a, b = two_servers
    name_a, name_b = f"127.0.0.1:{a.port}", f"localhost:{b.port}"
    alice = register(a, "alice", "Alice")
    bob = register(b, "bob", "Bob")
    alice_id, bob_id = f"@alice:{name_a}", f"@bob:{name_b}"
    room_id = call(a, "POST", f"{V3}/createRoom", alice, json={"preset": "public_chat"})["room_id"]
    version = call(a, "GET", f"{V3}/rooms/{room_id}/state/m.room.create", alice)["room_version"]

    # Bob joins: his join, made as B would, reaches A in a transaction from B.
    join, join_id = asyncio.run(join_pdu(a, room_id, bob_id, name_b, tmp_path / "b"))
    answer = asyncio.run(
        send_as(tmp_path / "tls", name_b, tmp_path / "b", name_a, {"pdus": [join], "edus": []})
    )
    assert answer == {"pdus": {join_id: {}}}
    members = call(a, "GET", f"{V3}/rooms/{room_id}/joined_members", alice)["joined"]
    assert set(members) == {alice_id, bob_id}
    # B gets the room as send_join would leave it.
    b.stop()
    pdus = asyncio.run(room_events(a, room_id))
    asyncio.run(copy_room(pdus, room_id, version, b))
    b.start()
    members = call(b, "GET", f"{V3}/rooms/{room_id}/joined_members", bob)["joined"]
    assert set(members) == {alice_id, bob_id}

    since_a = call(a, "GET", f"{V3}/sync", alice)["next_batch"]
    since_b = call(b, "GET", f"{V3}/sync", bob)["next_batch"]

    def timeline(data: dict[str, Any]) -> list[dict[str, Any]]:
        room = data.get("rooms", {}).get("join", {}).get(room_id, {})
        events: list[dict[str, Any]] = room.get("timeline", {}).get("events", [])
        return events

    def ephemeral(data: dict[str, Any], event_type: str) -> list[dict[str, Any]]:
        room = data.get("rooms", {}).get("join", {}).get(room_id, {})
        events = room.get("ephemeral", {}).get("events", [])
        return [e for e in events if e["type"] == event_type]

    # A message from Alice reaches Bob on B.
    sent = call(
        a,
        "PUT",
        f"{V3}/rooms/{room_id}/send/m.room.message/1",
        alice,
        json={"msgtype": "m.text", "body": "hello from A"},
    )["event_id"]
    _, since_b = wait_for(b, bob, lambda d: sent in [e["event_id"] for e in timeline(d)], since_b)

    # And one from Bob reaches Alice on A.
    reply = call(
        b,
        "PUT",
        f"{V3}/rooms/{room_id}/send/m.room.message/1",
        bob,
        json={"msgtype": "m.text", "body": "hello from B"},
    )["event_id"]
    _, since_a = wait_for(
        a, alice, lambda d: reply in [e["event_id"] for e in timeline(d)], since_a
    )

    # Typing: Alice types, Bob sees it.
    call(a, "PUT", f"{V3}/rooms/{room_id}/typing/{alice_id}", alice, json={"typing": True})
    _, since_b = wait_for(
        b,
        bob,
        lambda d: any(alice_id in e["content"]["user_ids"] for e in ephemeral(d, "m.typing")),
        since_b,
    )

    # A read receipt: Bob reads Alice's message, Alice sees it.
    call(b, "POST", f"{V3}/rooms/{room_id}/receipt/m.read/{sent}", bob, json={})
    _, since_a = wait_for(
        a,
        alice,
        lambda d: any(
            bob_id in e["content"].get(sent, {}).get("m.read", {})
            for e in ephemeral(d, "m.receipt")
        ),
        since_a,
    )

    # Presence: Bob is online with a status, Alice sees it.
    call(
        b,
        "PUT",
        f"{V3}/presence/{bob_id}/status",
        bob,
        json={"presence": "online", "status_msg": "on B"},
    )
    _, since_a = wait_for(
        a,
        alice,
        lambda d: any(
            e["sender"] == bob_id and e["content"].get("status_msg") == "on B"
            for e in d.get("presence", {}).get("events", [])
        ),
        since_a,
    )

    # To-device: Alice to Bob's device, delivered once.
    bob_device = whoami(b, bob)["device_id"]
    call(
        a,
        "PUT",
        f"{V3}/sendToDevice/m.test/td1",
        alice,
        json={"messages": {bob_id: {bob_device: {"hello": "device"}}}},
    )
    data, since_b = wait_for(b, bob, lambda d: bool(d.get("to_device", {}).get("events")), since_b)
    assert data["to_device"]["events"] == [
        {"type": "m.test", "sender": alice_id, "content": {"hello": "device"}}
    ]

    # Device lists: Alice's new keys on A reach B (an m.device_list_update, then B fetches
    # her list from A); Bob hears of the change, and B answers his /keys/query from its cache
    # even with A gone.
    me = whoami(a, alice)
    device = Device(alice_id, me["device_id"], alice)
    keys = device.device_keys()
    call(a, "POST", f"{V3}/keys/upload", alice, json={"device_keys": keys})
    wait_for(b, bob, lambda d: alice_id in d.get("device_lists", {}).get("changed", []), since_b)
    a.stop()
    answer = call(b, "POST", f"{V3}/keys/query", bob, json={"device_keys": {alice_id: []}})
    assert answer["failures"] == {}
    assert answer["device_keys"][alice_id] == {device.device_id: keys}
