"""The remote device list cache on both databases: m.device_list_update with prev_id
chains (a gap makes a resync through /user/devices), m.signing_key_update, our clients'
device_lists.changed, and /keys/query answered from the cache."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.ids import UserID
from homeserver.e2ee.remote_keys import query_remote
from homeserver.federation.client import FederationError
from homeserver.federation.remote_devices import (
    RESYNC_FIRST_MS,
    RESYNC_MAX_MS,
    BadEdu,
    RemoteDeviceLists,
    resync_backoff_ms,
)
from tests.api.e2ee_helpers import Device, query, sync
from tests.api.test_federation_send import EVE, put_txn, room_with_eve, txn
from tests.federation_helpers import FakeRemote

Fed = tuple[Homeserver, httpx.AsyncClient]


class FakeDevices:
    """Eve's server answering /user/devices."""

    def __init__(self) -> None:
        self.answer: Any = None
        self.calls: list[tuple[str, str]] = []

    async def get_json(self, destination: str, path: str) -> Any:
        self.calls.append((destination, path))
        if self.answer is None:
            raise FederationError(destination, "unreachable")
        return self.answer


def device_keys(device_id: str, user_id: str = EVE) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"ed25519:{device_id}": f"key-of-{device_id}"},
        "signatures": {user_id: {f"ed25519:{device_id}": "sig"}},
    }


def master_key(user_id: str = EVE) -> dict[str, Any]:
    return {"user_id": user_id, "usage": ["master"], "keys": {"ed25519:M": "M"}}


def update(device_id: str, stream_id: int, prev_id: list[int], **extra: Any) -> dict[str, Any]:
    content: dict[str, Any] = {
        "user_id": EVE,
        "device_id": device_id,
        "stream_id": stream_id,
        "prev_id": prev_id,
        **extra,
    }
    if not extra.get("deleted"):
        content.setdefault("keys", device_keys(device_id))
    return content


def cache_of(hs: Homeserver, fetch: FakeDevices) -> RemoteDeviceLists:
    return RemoteDeviceLists(
        hs.remote_device_store, fetch, hs.device_lists, hs.device_list_store, hs.clock, "test"
    )


async def stale_eve(fed: Fed, remote: FakeRemote) -> tuple[FakeDevices, RemoteDeviceLists]:
    """Eve shares a room with ours, and her server is down when her first update needs a
    resync: her list is stale."""
    hs, _ = fed
    await room_with_eve(fed, remote)
    fetch = FakeDevices()
    cache = cache_of(hs, fetch)
    await cache.on_device_list_update("remote.test", update("A", 1, []))
    assert len(fetch.calls) == 1
    return fetch, cache


async def cached_devices(cache: RemoteDeviceLists) -> list[str] | None:
    found = (await cache.current([EVE])).get(EVE)
    return None if found is None else [d.device_id for d in found.devices]


async def test_updates_follow_the_prev_id_chain_and_resync_on_a_gap(
    fed: Fed, remote: FakeRemote
) -> None:
    hs, _ = fed
    await room_with_eve(fed, remote)
    fetch = FakeDevices()
    fetch.answer = {
        "user_id": EVE,
        "stream_id": 10,
        "devices": [{"device_id": "A", "keys": device_keys("A")}],
        "master_key": master_key(),
    }
    cache = cache_of(hs, fetch)
    # Nothing cached: the first update makes a resync, whatever its prev_id.
    await cache.on_device_list_update("remote.test", update("B", 11, [10]))
    assert fetch.calls == [
        ("remote.test", "/_matrix/federation/v1/user/devices/%40eve%3Aremote.test")
    ]
    assert await cached_devices(cache) == ["A"]
    # Its prev_id is the resync's stream ID: applied without asking.
    await cache.on_device_list_update("remote.test", update("B", 12, [10]))
    assert await cached_devices(cache) == ["A", "B"]
    # Chained on the last one, and deleting: applied.
    await cache.on_device_list_update("remote.test", update("A", 13, [12], deleted=True))
    assert await cached_devices(cache) == ["B"]
    assert len(fetch.calls) == 1
    # The same update again: nothing.
    await cache.on_device_list_update("remote.test", update("A", 13, [12], deleted=True))
    assert len(fetch.calls) == 1
    # An update after a lost one (prev_id 14 never arrived): resync.
    fetch.answer = {
        "user_id": EVE,
        "stream_id": 15,
        "devices": [
            {"device_id": "B", "keys": device_keys("B")},
            {"device_id": "C", "keys": device_keys("C")},
        ],
    }
    await cache.on_device_list_update("remote.test", update("C", 15, [14]))
    assert len(fetch.calls) == 2
    assert await cached_devices(cache) == ["B", "C"]
    found = (await cache.current([EVE]))[EVE]
    assert found.cross_signing == {}  # the resync's answer had no master key any more


async def test_bad_updates_are_refused_and_strangers_ignored(fed: Fed, remote: FakeRemote) -> None:
    hs, _ = fed
    await room_with_eve(fed, remote)
    fetch = FakeDevices()
    cache = cache_of(hs, fetch)
    bad = [
        ("elsewhere.test", update("A", 1, [])),  # about another server's user
        ("remote.test", {**update("A", 1, []), "stream_id": "1"}),
        ("remote.test", {**update("A", 1, []), "prev_id": ["x"]}),
        ("remote.test", {**update("A", 1, []), "keys": device_keys("OTHER")}),
        ("remote.test", {**update("A", 1, []), "deleted": "yes"}),
        ("remote.test", {**update("A", 1, []), "user_id": "not a user"}),
    ]
    for origin, content in bad:
        with pytest.raises(BadEdu):
            await cache.on_device_list_update(origin, content)
    # A user nobody here shares a room with: not tracked, nothing asked.
    stranger = {**update("A", 1, []), "user_id": "@zed:remote.test"}
    stranger["keys"] = device_keys("A", "@zed:remote.test")
    await cache.on_device_list_update("remote.test", stranger)
    assert fetch.calls == []


async def test_a_failed_resync_leaves_the_list_stale(fed: Fed, remote: FakeRemote) -> None:
    fetch, cache = await stale_eve(fed, remote)
    assert await cached_devices(cache) is None
    # A malformed answer is no better.
    fetch.answer = {"user_id": EVE, "stream_id": 2, "devices": [{"device_id": "A", "keys": 1}]}
    await cache.on_device_list_update("remote.test", update("A", 2, [1]))
    assert await cached_devices(cache) is None
    # A good one makes it current again.
    fetch.answer = {"user_id": EVE, "stream_id": 3, "devices": []}
    await cache.on_device_list_update("remote.test", update("A", 3, [2]))
    assert await cached_devices(cache) == []


async def test_our_clients_hear_of_changes_and_query_the_cache(
    fed: Fed, remote: FakeRemote
) -> None:
    hs, client = fed
    alice, _ = await room_with_eve(fed, remote)
    since = (await sync(client, alice))["next_batch"]
    fetch = FakeDevices()
    fetch.answer = {
        "user_id": EVE,
        "stream_id": 5,
        "devices": [{"device_id": "A", "keys": device_keys("A")}],
        "master_key": master_key(),
    }
    cache = cache_of(hs, fetch)
    await cache.on_device_list_update("remote.test", update("A", 5, []))
    data = await sync(client, alice, since=since)
    assert EVE in data["device_lists"]["changed"]
    # The homeserver's own cache (the same tables): /keys/query answers without asking
    # remote.test, which this test server cannot reach.
    answer = await query(client, alice, {EVE: []})
    assert answer["failures"] == {}
    assert answer["device_keys"][EVE] == {"A": device_keys("A")}
    assert answer["master_keys"][EVE] == master_key()
    answer = await query(client, alice, {EVE: ["NOPE"]})
    assert answer["device_keys"][EVE] == {}
    # A signing key update replaces the master key.
    new_master = {"user_id": EVE, "usage": ["master"], "keys": {"ed25519:N": "N"}}
    await cache.on_signing_key_update("remote.test", {"user_id": EVE, "master_key": new_master})
    answer = await query(client, alice, {EVE: []})
    assert answer["master_keys"][EVE] == new_master
    with pytest.raises(BadEdu):
        await cache.on_signing_key_update(
            "remote.test", {"user_id": EVE, "master_key": {**new_master, "usage": ["x"]}}
        )
    with pytest.raises(BadEdu):
        await cache.on_signing_key_update(
            "elsewhere.test", {"user_id": EVE, "master_key": new_master}
        )


async def test_device_list_edus_in_a_transaction(fed: Fed, remote: FakeRemote) -> None:
    """Through PUT /send: the server cannot reach remote.test, so the resync fails and the
    list is left stale; bad EDUs are ignored and the transaction succeeds."""
    hs, client = fed
    alice: Device
    alice, _ = await room_with_eve(fed, remote)
    edus = [
        {"edu_type": "m.device_list_update", "content": update("A", 1, [])},
        {"edu_type": "m.device_list_update", "content": {"user_id": 5}},
        {"edu_type": "m.signing_key_update", "content": {"user_id": "@x:elsewhere.test"}},
    ]
    r = await put_txn(client, remote, "devices", txn(edus=edus))
    assert r.status_code == 200, r.text
    assert await hs.remote_device_store.get_tracked(UserID(EVE)) == (0, True)
    assert await hs.remote_devices.current([EVE]) == {}


async def test_a_stale_list_is_fetched_again_on_a_timer_backed_off(
    fed: Fed, remote: FakeRemote, clock: FakeClock
) -> None:
    hs, _ = fed
    store = hs.remote_device_store
    fetch, cache = await stale_eve(fed, remote)
    assert await store.get_resync_interval(EVE) == RESYNC_FIRST_MS
    # Not tried again before its time.
    assert await cache.retry_stale_once() == 0
    assert len(fetch.calls) == 1
    clock.advance(RESYNC_FIRST_MS)
    assert await cache.retry_stale_once() == 0  # tried, still down: the wait doubles
    assert len(fetch.calls) == 2
    assert await store.get_resync_interval(EVE) == 2 * RESYNC_FIRST_MS
    clock.advance(RESYNC_FIRST_MS)
    assert await cache.retry_stale_once() == 0
    assert len(fetch.calls) == 2
    # Back up: the next try makes the list current, and the timer leaves it alone.
    fetch.answer = {
        "user_id": EVE,
        "stream_id": 7,
        "devices": [{"device_id": "A", "keys": device_keys("A")}],
    }
    clock.advance(RESYNC_FIRST_MS)
    assert await cache.retry_stale_once() == 1
    assert len(fetch.calls) == 3
    assert await cached_devices(cache) == ["A"]
    assert await store.get_tracked(EVE) == (7, False)
    clock.advance(RESYNC_MAX_MS)
    assert await cache.retry_stale_once() == 0
    assert len(fetch.calls) == 3
    # The wait is capped.
    interval = 0
    for _ in range(20):
        interval = resync_backoff_ms(interval)
    assert interval == RESYNC_MAX_MS


async def test_a_stale_list_of_a_user_nobody_shares_a_room_with_is_not_retried(
    fed: Fed, remote: FakeRemote, clock: FakeClock
) -> None:
    hs, _ = fed
    fetch = FakeDevices()
    cache = cache_of(hs, fetch)
    stranger = "@zed:remote.test"
    await hs.remote_device_store.mark_stale(stranger, clock.now_ms(), RESYNC_FIRST_MS)
    clock.advance(RESYNC_FIRST_MS)
    assert await hs.remote_device_store.due_resyncs(clock.now_ms(), 10) == [stranger]
    assert await cache.retry_stale_once() == 0
    assert fetch.calls == []
    assert await hs.remote_device_store.due_resyncs(clock.now_ms() + RESYNC_MAX_MS, 10) == []


class FakeUserKeys:
    """Eve's server answering /user/keys/query (the fallback for a list not current)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def query_user_keys(self, server_name: str, wanted: Any) -> Any:
        self.calls.append((server_name, wanted))
        return {"device_keys": {EVE: {"Q": device_keys("Q")}}}

    async def claim_user_keys(self, server_name: str, wanted: Any) -> Any:
        raise AssertionError("not claimed here")


async def test_keys_query_fetches_a_stale_list_again_at_once(fed: Fed, remote: FakeRemote) -> None:
    hs, _ = fed
    fetch, cache = await stale_eve(fed, remote)
    keys = FakeUserKeys()
    # Still down: the query tries the resync (its back-off notwithstanding), then asks
    # /user/keys/query as before; the resync's wait doubles.
    answer, failures = await query_remote(keys, {EVE: []}, None, cache)
    assert len(fetch.calls) == 2 and len(keys.calls) == 1
    assert answer["device_keys"][EVE] == {"Q": device_keys("Q")} and failures == {}
    assert await hs.remote_device_store.get_resync_interval(EVE) == 2 * RESYNC_FIRST_MS
    # Back: the query's resync makes the list current, and it answers from it.
    fetch.answer = {
        "user_id": EVE,
        "stream_id": 4,
        "devices": [{"device_id": "A", "keys": device_keys("A")}],
        "master_key": master_key(),
    }
    answer, failures = await query_remote(keys, {EVE: []}, None, cache)
    assert len(fetch.calls) == 3 and len(keys.calls) == 1
    assert answer["device_keys"][EVE] == {"A": device_keys("A")}
    assert answer["master_keys"][EVE] == master_key()
    # Current now: the next query reads the cache without asking anyone.
    await query_remote(keys, {EVE: []}, None, cache)
    assert len(fetch.calls) == 3 and len(keys.calls) == 1
