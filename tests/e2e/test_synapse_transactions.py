"""Transactions with Synapse (the pinned release, in its own virtualenv) on loopback over
TLS: once a Synapse user has joined a room of ours, messages, typing, read receipts and
to-device messages go both ways, each server's sender putting them in PUT /send
transactions to the other, and Synapse's device list updates reach our clients."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from tests.api.e2ee_helpers import Device
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_synapse_interop import auth, client, ours_and_synapse, register
from tests.synapse_helpers import SynapseProcess

__all__ = ["ours_and_synapse"]  # the fixture, shared with the join tests

V3 = "/_matrix/client/v3"


def sync_until(
    c: httpx.Client, token: str, found: Callable[[dict[str, Any]], bool], since: str | None
) -> str:
    """Incremental /sync until ``found`` holds for a response (30 s at most); the next
    ``since``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        params: dict[str, Any] = {"timeout": 1000}
        if since is not None:
            params["since"] = since
        r = c.get(f"{V3}/sync", params=params, headers=auth(token))
        assert r.status_code == 200, r.text
        data = r.json()
        since = data["next_batch"]
        if found(data):
            return str(since)
    raise AssertionError("not seen in time")


def room_part(data: dict[str, Any], room_id: str, section: str) -> list[dict[str, Any]]:
    room = data.get("rooms", {}).get("join", {}).get(room_id, {})
    events: list[dict[str, Any]] = room.get(section, {}).get("events", [])
    return events


def test_messages_typing_and_receipts_with_synapse(
    ours_and_synapse: tuple[ServerProcess, SynapseProcess],
) -> None:
    ours, synapse = ours_and_synapse
    our_name = f"localhost:{ours.port}"
    with client(ours.base_url, ours.verify) as a, client(synapse.base_url, synapse.verify) as s:
        alice, alice_token = register(a, "alice")
        bob, bob_token = register(s, "bob")
        r = a.post(f"{V3}/createRoom", headers=auth(alice_token), json={"preset": "public_chat"})
        assert r.status_code == 200, r.text
        room_id = r.json()["room_id"]
        room = quote(room_id, safe="")
        r = s.post(
            f"{V3}/join/{room}",
            params={"server_name": our_name},
            headers=auth(bob_token),
            json={},
        )
        assert r.status_code == 200, f"{r.text}\n{synapse.log_tail()}"
        since_a = sync_until(a, alice_token, lambda d: True, None)
        since_s = sync_until(s, bob_token, lambda d: True, None)

        # Ours to Synapse: a message, then typing.
        r = a.put(
            f"{V3}/rooms/{room}/send/m.room.message/1",
            headers=auth(alice_token),
            json={"msgtype": "m.text", "body": "hello Synapse"},
        )
        assert r.status_code == 200, r.text
        ours_sent = r.json()["event_id"]

        def has_event(event_id: str) -> Callable[[dict[str, Any]], bool]:
            return lambda d: event_id in [e["event_id"] for e in room_part(d, room_id, "timeline")]

        since_s = sync_until(s, bob_token, has_event(ours_sent), since_s)
        r = a.put(
            f"{V3}/rooms/{room}/typing/{quote(alice)}",
            headers=auth(alice_token),
            json={"typing": True, "timeout": 20_000},
        )
        assert r.status_code == 200, r.text

        def typing(user: str) -> Callable[[dict[str, Any]], bool]:
            return lambda d: any(
                user in e["content"].get("user_ids", [])
                for e in room_part(d, room_id, "ephemeral")
                if e["type"] == "m.typing"
            )

        since_s = sync_until(s, bob_token, typing(alice), since_s)

        # Synapse to ours: a message, typing.
        r = s.put(
            f"{V3}/rooms/{room}/send/m.room.message/1",
            headers=auth(bob_token),
            json={"msgtype": "m.text", "body": "hello ours"},
        )
        assert r.status_code == 200, r.text
        synapse_sent = r.json()["event_id"]
        since_a = sync_until(a, alice_token, has_event(synapse_sent), since_a)
        r = s.put(
            f"{V3}/rooms/{room}/typing/{quote(bob)}",
            headers=auth(bob_token),
            json={"typing": True, "timeout": 20_000},
        )
        assert r.status_code == 200, r.text
        since_a = sync_until(a, alice_token, typing(bob), since_a)

        # Read receipts, both ways.
        def read_by(user: str, event_id: str) -> Callable[[dict[str, Any]], bool]:
            return lambda d: any(
                user in e["content"].get(event_id, {}).get("m.read", {})
                for e in room_part(d, room_id, "ephemeral")
                if e["type"] == "m.receipt"
            )

        r = s.post(
            f"{V3}/rooms/{room}/receipt/m.read/{ours_sent}", headers=auth(bob_token), json={}
        )
        assert r.status_code == 200, r.text
        since_a = sync_until(a, alice_token, read_by(bob, ours_sent), since_a)
        r = a.post(
            f"{V3}/rooms/{room}/receipt/m.read/{synapse_sent}", headers=auth(alice_token), json={}
        )
        assert r.status_code == 200, r.text
        since_s = sync_until(s, bob_token, read_by(alice, synapse_sent), since_s)

        # To-device messages, both ways (m.direct_to_device).
        def whoami(c: httpx.Client, token: str) -> str:
            r = c.get(f"{V3}/account/whoami", headers=auth(token))
            assert r.status_code == 200, r.text
            return str(r.json()["device_id"])

        alice_device, bob_device = whoami(a, alice_token), whoami(s, bob_token)

        def to_device_from(sender: str, marker: str) -> Callable[[dict[str, Any]], bool]:
            return lambda d: any(
                e["sender"] == sender and e["content"].get("marker") == marker
                for e in d.get("to_device", {}).get("events", [])
            )

        r = a.put(
            f"{V3}/sendToDevice/m.test/td1",
            headers=auth(alice_token),
            json={"messages": {bob: {bob_device: {"marker": "from ours"}}}},
        )
        assert r.status_code == 200, r.text
        since_s = sync_until(s, bob_token, to_device_from(alice, "from ours"), since_s)
        r = s.put(
            f"{V3}/sendToDevice/m.test/td1",
            headers=auth(bob_token),
            json={"messages": {alice: {alice_device: {"marker": "from synapse"}}}},
        )
        assert r.status_code == 200, r.text
        since_a = sync_until(a, alice_token, to_device_from(bob, "from synapse"), since_a)

        # Device lists: bob's new device keys on Synapse reach us (m.device_list_update),
        # alice hears of the change, and /keys/query answers with them.
        keys = Device(bob, bob_device, bob_token).device_keys()
        r = s.post(f"{V3}/keys/upload", headers=auth(bob_token), json={"device_keys": keys})
        assert r.status_code == 200, r.text
        since_a = sync_until(
            a,
            alice_token,
            lambda d: bob in d.get("device_lists", {}).get("changed", []),
            since_a,
        )
        r = a.post(f"{V3}/keys/query", headers=auth(alice_token), json={"device_keys": {bob: []}})
        assert r.status_code == 200, r.text
        assert r.json()["failures"] == {}
        assert r.json()["device_keys"][bob] == {bob_device: keys}
