"""Device lists in /sync and /keys/changes: exactly the users who share a room see a change."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.api.e2ee_helpers import (
    V3,
    Device,
    create_room,
    join,
    leave,
    new_device,
    sign,
    sync,
    upload,
)
from tests.helpers import DEFAULT_PASSWORD
from tests.openapi_schema import assert_response_matches


class Watcher:
    """Syncs one device incrementally and reports the device lists of each step."""

    def __init__(self, client: httpx.AsyncClient, device: Device) -> None:
        self.client = client
        self.device = device
        self.token = ""

    async def start(self) -> Watcher:
        self.token = (await sync(self.client, self.device))["next_batch"]
        return self

    async def lists(self) -> dict[str, list[str]]:
        """``{"changed": [...], "left": [...]}`` since the last call (empty lists if none)."""
        before = self.token
        body = await sync(self.client, self.device, since=before)
        self.token = body["next_batch"]
        lists = body.get("device_lists", {"changed": [], "left": []})
        # /keys/changes between the same tokens says the same.
        assert await changes(self.client, self.device, before, self.token) == lists
        return {"changed": sorted(lists["changed"]), "left": sorted(lists["left"])}


async def changes(
    client: httpx.AsyncClient, device: Device, from_token: str, to_token: str
) -> dict[str, Any]:
    r = await client.get(
        f"{V3}/keys/changes", params={"from": from_token, "to": to_token}, headers=device.headers
    )
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


def _nothing() -> dict[str, list[str]]:
    return {"changed": [], "left": []}


async def _delete_device(
    client: httpx.AsyncClient, device: Device, localpart: str, device_id: str
) -> None:
    r = await client.request(
        "DELETE",
        f"{V3}/devices/{device_id}",
        json={
            "auth": {
                "type": "m.login.password",
                "password": DEFAULT_PASSWORD,
                "identifier": {"type": "m.id.user", "user": localpart},
            }
        },
        headers=device.headers,
    )
    assert r.status_code == 200, r.text


async def test_key_and_device_changes_reach_exactly_room_mates(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    carol = await new_device(client, "carol")
    dan = await new_device(client, "dan")
    shared = await create_room(client, alice, invite=[bob.user_id])
    await join(client, bob, shared)
    elsewhere = await create_room(client, carol, invite=[dan.user_id])
    await join(client, dan, elsewhere)
    watchers = {d.user_id: await Watcher(client, d).start() for d in (alice, bob, carol, dan)}

    async def seen() -> dict[str, dict[str, list[str]]]:
        return {user: await w.lists() for user, w in watchers.items()}

    # Bob uploads device keys: Alice (a room mate) and Bob himself see it; the others not.
    bob_keys = bob.device_keys()
    await upload(client, bob, {"device_keys": bob_keys})
    expected = {
        alice.user_id: {"changed": [bob.user_id], "left": []},
        bob.user_id: {"changed": [bob.user_id], "left": []},
        carol.user_id: _nothing(),
        dan.user_id: _nothing(),
    }
    assert await seen() == expected
    # Once told, not again.
    assert await seen() == {user: _nothing() for user in watchers}
    # One-time keys alone change no device list; the same device keys again neither.
    await upload(client, bob, {"device_keys": bob_keys, "one_time_keys": bob.one_time_keys(3)})
    assert await seen() == {user: _nothing() for user in watchers}

    # A new device of Bob's with keys, then its deletion.
    phone = await new_device(client, "bob", registered=True)
    await upload(client, phone, {"device_keys": phone.device_keys()})
    assert await seen() == expected
    await _delete_device(client, bob, "bob", phone.device_id)
    assert await seen() == expected

    # Cross-signing keys count as device keys.
    master = Device(bob.user_id, "unused", bob.token)
    public = master.ed25519
    r = await client.post(
        f"{V3}/keys/device_signing/upload",
        json={
            "master_key": {
                "user_id": bob.user_id,
                "usage": ["master"],
                "keys": {f"ed25519:{public}": public},
            }
        },
        headers=bob.headers,
    )
    assert r.status_code == 200, r.text
    assert await seen() == expected

    # Carol's changes reach Dan only.
    await upload(client, carol, {"device_keys": carol.device_keys()})
    assert await seen() == {
        alice.user_id: _nothing(),
        bob.user_id: _nothing(),
        carol.user_id: {"changed": [carol.user_id], "left": []},
        dan.user_id: {"changed": [carol.user_id], "left": []},
    }


async def test_joining_and_leaving_shared_rooms(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    carol = await new_device(client, "carol")
    dan = await new_device(client, "dan")
    room = await create_room(client, alice, invite=[bob.user_id], preset="public_chat")
    await join(client, bob, room)
    other = await create_room(client, carol, invite=[dan.user_id])
    await join(client, dan, other)
    watchers = {d.user_id: await Watcher(client, d).start() for d in (alice, bob, carol, dan)}

    async def seen() -> dict[str, dict[str, list[str]]]:
        return {user: await w.lists() for user, w in watchers.items()}

    # Carol joins: she now shares a room with Alice and Bob, who refetch her devices, and
    # she refetches theirs. Dan shares nothing new.
    await join(client, carol, room)
    assert await seen() == {
        alice.user_id: {"changed": [carol.user_id], "left": []},
        bob.user_id: {"changed": [carol.user_id], "left": []},
        carol.user_id: {"changed": sorted([alice.user_id, bob.user_id]), "left": []},
        dan.user_id: _nothing(),
    }
    # Carol leaves: nobody shares a room with her any more but Dan, who is not told.
    await leave(client, carol, room)
    assert await seen() == {
        alice.user_id: {"changed": [], "left": [carol.user_id]},
        bob.user_id: {"changed": [], "left": [carol.user_id]},
        carol.user_id: {"changed": [], "left": sorted([alice.user_id, bob.user_id])},
        dan.user_id: _nothing(),
    }
    # Bob leaves a room while still sharing another with Alice: nobody has left.
    second = await create_room(client, alice, invite=[bob.user_id])
    await join(client, bob, second)
    await seen()
    await leave(client, bob, room)
    assert await seen() == {user: _nothing() for user in watchers}


async def test_long_poll_wakes_on_device_list_change(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    room = await create_room(client, alice, invite=[bob.user_id])
    await join(client, bob, room)
    since = (await sync(client, alice))["next_batch"]
    waiting = asyncio.create_task(sync(client, alice, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    await upload(client, bob, {"device_keys": bob.device_keys()})
    body = await asyncio.wait_for(waiting, 10)
    assert body["device_lists"] == {"changed": [bob.user_id], "left": []}


async def test_signing_another_users_key_tells_the_signer(client: httpx.AsyncClient) -> None:
    """Alice's user-signing key signs Bob's master key: her other devices refetch Bob."""
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    room = await create_room(client, alice, invite=[bob.user_id])
    await join(client, bob, room)
    keys: dict[str, Device] = {}
    for owner in (alice, bob):
        master = Device(owner.user_id, "m", owner.token)
        usk = Device(owner.user_id, "u", owner.token)
        keys[owner.user_id] = master
        body: dict[str, Any] = {
            "master_key": {
                "user_id": owner.user_id,
                "usage": ["master"],
                "keys": {f"ed25519:{master.ed25519}": master.ed25519},
            }
        }
        body["user_signing_key"] = sign(
            {
                "user_id": owner.user_id,
                "usage": ["user_signing"],
                "keys": {f"ed25519:{usk.ed25519}": usk.ed25519},
            },
            owner.user_id,
            master.key,
            f"ed25519:{master.ed25519}",
        )
        r = await client.post(f"{V3}/keys/device_signing/upload", json=body, headers=owner.headers)
        assert r.status_code == 200, r.text
        keys[f"{owner.user_id}/usk"] = usk
    watcher = await Watcher(client, alice).start()
    bob_master = keys[bob.user_id]
    usk = keys[f"{alice.user_id}/usk"]
    signed = sign(
        {
            "user_id": bob.user_id,
            "usage": ["master"],
            "keys": {f"ed25519:{bob_master.ed25519}": bob_master.ed25519},
        },
        alice.user_id,
        usk.key,
        f"ed25519:{usk.ed25519}",
    )
    r = await client.post(
        f"{V3}/keys/signatures/upload",
        json={bob.user_id: {bob_master.ed25519: signed}},
        headers=alice.headers,
    )
    assert r.status_code == 200 and r.json()["failures"] == {}, r.text
    assert (await watcher.lists())["changed"] == [bob.user_id]


async def test_deleted_device_drops_pending_to_device_messages(client: httpx.AsyncClient) -> None:
    """The combined hook: to-device messages and keys both go with a deleted device."""
    alice = await new_device(client, "alice")
    phone = await new_device(client, "alice", registered=True)
    await upload(
        client, phone, {"device_keys": phone.device_keys(), "one_time_keys": phone.one_time_keys(1)}
    )
    r = await client.put(
        f"{V3}/sendToDevice/m.test/t1",
        json={"messages": {alice.user_id: {phone.device_id: {"n": 1}}}},
        headers=alice.headers,
    )
    assert r.status_code == 200
    await _delete_device(client, alice, "alice", phone.device_id)
    r = await client.post(
        f"{V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": DEFAULT_PASSWORD,
            "device_id": phone.device_id,
        },
    )
    again = Device(alice.user_id, phone.device_id, r.json()["access_token"])
    body = await sync(client, again)
    assert "to_device" not in body
    assert body["device_one_time_keys_count"] == {"signed_curve25519": 0}
