"""Transactions between two of our servers on loopback over TLS: once a user of each shares
a room (joined through make_join/send_join), messages both ways, typing, read receipts,
presence, to-device messages and device list updates reach the other server's clients
through PUT /send, sent by each server's federation sender."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from tests.api.e2ee_helpers import Device
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_federation_two_servers import register, two_servers

__all__ = ["two_servers"]  # the fixture, shared with the key and request tests

V3 = "/_matrix/client/v3"


def client_of(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, verify=server.verify, timeout=30)


def call(server: ServerProcess, method: str, path: str, token: str, **kw: Any) -> Any:
    with client_of(server) as c:
        r = c.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
    assert r.status_code == 200, f"{r.text}\n{server.log_path.read_text()[-3000:]}"
    return r.json()


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
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_servers
    name_a, name_b = f"127.0.0.1:{a.port}", f"localhost:{b.port}"
    alice = register(a, "alice", "Alice")
    bob = register(b, "bob", "Bob")
    alice_id, bob_id = f"@alice:{name_a}", f"@bob:{name_b}"
    room_id = call(
        a,
        "POST",
        f"{V3}/createRoom",
        alice,
        json={"preset": "public_chat", "room_alias_name": "lobby"},
    )["room_id"]
    # Bob joins through A (make_join/send_join); from then on both servers are in the room.
    alias = quote(f"#lobby:{name_a}", safe="")
    assert call(b, "POST", f"{V3}/join/{alias}", bob)["room_id"] == room_id
    for server, token in ((a, alice), (b, bob)):
        members = call(server, "GET", f"{V3}/rooms/{room_id}/joined_members", token)["joined"]
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
