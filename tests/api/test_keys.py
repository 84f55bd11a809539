"""Device keys, one-time and fallback keys: /keys/upload, /keys/query, /keys/claim."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from nacl.signing import SigningKey

from tests.api.e2ee_helpers import (
    V3,
    Device,
    claim,
    new_device,
    query,
    sign,
    sync,
    upload,
)
from tests.helpers import DEFAULT_PASSWORD, assert_errors, register


async def test_upload_counts_and_sync(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    body = await upload(
        client,
        alice,
        {
            "device_keys": alice.device_keys(),
            "one_time_keys": alice.one_time_keys(5),
            "fallback_keys": alice.fallback_key(),
        },
    )
    assert body == {"one_time_key_counts": {"signed_curve25519": 5}}
    # Other algorithms are counted apart.
    body = await upload(
        client, alice, {"one_time_keys": alice.one_time_keys(2, algorithm="curve25519")}
    )
    assert body["one_time_key_counts"] == {"signed_curve25519": 5, "curve25519": 2}
    synced = await sync(client, alice)
    assert synced["device_one_time_keys_count"] == {"signed_curve25519": 5, "curve25519": 2}
    assert synced["device_unused_fallback_key_types"] == ["signed_curve25519"]
    assert "device_lists" not in synced  # initial syncs carry no device lists


async def test_counts_in_every_sync_even_without_keys(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    first = await sync(client, alice)
    assert first["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert first["device_unused_fallback_key_types"] == []
    # Counts are no news: a long-poll with nothing else to say still times out empty.
    later = await sync(client, alice, since=first["next_batch"], timeout=50)
    assert later["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert "device_lists" not in later


async def test_incremental_syncs_follow_claims_and_uploads(client: httpx.AsyncClient) -> None:
    """Syncs keep a device's counts between changes: every claim and upload moves them."""
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    await upload(client, alice, {"one_time_keys": alice.one_time_keys(3)})
    since = (await sync(client, alice))["next_batch"]
    quiet = await sync(client, alice, since=since, timeout=50)
    assert quiet["device_one_time_keys_count"] == {"signed_curve25519": 3}
    wanted = {alice.user_id: {alice.device_id: "signed_curve25519"}}
    await claim(client, bob, wanted)
    after_claim = await sync(client, alice, since=quiet["next_batch"], timeout=50)
    assert after_claim["device_one_time_keys_count"] == {"signed_curve25519": 2}
    # A claim while alice waits: no news to end her long-poll, the new count at its end.
    waiting = asyncio.create_task(sync(client, alice, since=after_claim["next_batch"], timeout=500))
    await asyncio.sleep(0.1)
    await claim(client, bob, wanted)
    await asyncio.sleep(0.1)
    assert not waiting.done()
    assert (await waiting)["device_one_time_keys_count"] == {"signed_curve25519": 1}
    await upload(client, alice, {"one_time_keys": alice.one_time_keys(2, start=3)})
    later = await sync(client, alice, since=after_claim["next_batch"], timeout=50)
    assert later["device_one_time_keys_count"] == {"signed_curve25519": 3}


async def test_reupload_same_key_is_fine_different_is_400(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    keys = alice.one_time_keys(3)
    await upload(client, alice, {"device_keys": alice.device_keys(), "one_time_keys": keys})
    # A retried upload (the response was lost) stores nothing twice.
    assert (await upload(client, alice, {"one_time_keys": keys}))["one_time_key_counts"] == {
        "signed_curve25519": 3
    }
    other = alice.one_time_keys(1)  # K0 again, another key
    r = await client.post(
        f"{V3}/keys/upload",
        json={"one_time_keys": {**alice.one_time_keys(2, start=10), **other}},
        headers=alice.headers,
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    assert "signed_curve25519:K0" in r.json()["error"]
    # All or nothing: the two new keys of the refused upload were not stored either.
    assert (await sync(client, alice))["device_one_time_keys_count"] == {"signed_curve25519": 3}


async def test_upload_bad_inputs(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    good = alice.device_keys()
    tampered = dict(good, algorithms=["m.megolm.v1.aes-sha2"])
    unsigned_keys = {k: v for k, v in good.items() if k != "signatures"}
    # Names the device's key, signed by another one.
    forged = sign(unsigned_keys, alice.user_id, SigningKey.generate(), alice.key_name)
    path = f"{V3}/keys/upload"
    await assert_errors(
        client,
        "POST",
        path,
        [
            (b"not json", 400, "M_NOT_JSON"),
            ([], 400, "M_BAD_JSON"),
            ({"device_keys": bob.device_keys()}, 400, "M_INVALID_PARAM"),  # someone else's
            (
                {
                    "device_keys": sign(
                        dict(good, device_id="OTHER"), alice.user_id, alice.key, "ed25519:OTHER"
                    )
                },
                400,
                "M_INVALID_PARAM",
            ),
            ({"device_keys": {**good, "keys": {"curve25519:X": "abc"}}}, 400, "M_INVALID_PARAM"),
            (
                {
                    "device_keys": sign(
                        {**unsigned_keys, "keys": {alice.key_name: "bm90IGEga2V5"}},
                        alice.user_id,
                        alice.key,
                        alice.key_name,
                    )
                },
                400,
                "M_INVALID_PARAM",
            ),  # not an ed25519 key
            ({"device_keys": tampered}, 400, "M_INVALID_SIGNATURE"),
            ({"device_keys": forged}, 400, "M_INVALID_SIGNATURE"),
            ({"device_keys": {**unsigned_keys, "signatures": {}}}, 400, "M_INVALID_SIGNATURE"),
            ({"device_keys": unsigned_keys}, 400, "M_MISSING_PARAM"),
            ({"device_keys": {**good, "algorithms": "m.megolm.v1.aes-sha2"}}, 400, "M_BAD_JSON"),
            ({"device_keys": {**good, "keys": {alice.key_name: 1}}}, 400, "M_BAD_JSON"),
            ({"one_time_keys": {"no_colon": "abc"}}, 400, "M_INVALID_PARAM"),
            ({"one_time_keys": {"signed_curve25519:": "abc"}}, 400, "M_INVALID_PARAM"),
            ({"one_time_keys": {"signed_curve25519:A\u0000": "abc"}}, 400, "M_BAD_JSON"),
            ({"fallback_keys": {"signed_curve25519:" + "A" * 256: "abc"}}, 400, "M_INVALID_PARAM"),
            ({"one_time_keys": {"signed_curve25519:A": {"key": "abc"}}}, 400, "M_BAD_JSON"),
            ({"one_time_keys": {"signed_curve25519:A": 5}}, 400, "M_BAD_JSON"),
            (
                {
                    "one_time_keys": {
                        "signed_curve25519:A": {"key": "a", "signatures": {}, "x": 1.5}
                    }
                },
                400,
                "M_BAD_JSON",
            ),
            (
                {"fallback_keys": {**alice.fallback_key("A"), **alice.fallback_key("B")}},
                400,
                "M_INVALID_PARAM",
            ),
        ],
        headers=alice.headers,
    )
    r = await client.post(path, json={})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    # Nothing of the above was stored.
    assert (await query(client, bob, {alice.user_id: []}))["device_keys"] == {alice.user_id: {}}


async def test_query_devices_and_display_names(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    phone = await new_device(client, "alice", registered=True)
    bob = await new_device(client, "bob")
    uploaded = alice.device_keys(**{"org.example.extra": {"signed": True}})
    await upload(client, alice, {"device_keys": {**uploaded, "unsigned": {"x": 1}}})
    await upload(client, phone, {"device_keys": phone.device_keys()})
    r = await client.put(
        f"{V3}/devices/{phone.device_id}", json={"display_name": "Phone"}, headers=phone.headers
    )
    assert r.status_code == 200
    body = await query(client, bob, {alice.user_id: [], bob.user_id: [], "@nobody:test": []})
    assert body["failures"] == {}
    devices = body["device_keys"][alice.user_id]
    assert set(devices) == {alice.device_id, phone.device_id}
    assert devices[phone.device_id]["unsigned"] == {"device_display_name": "Phone"}
    # What was signed comes back as it was signed (extra keys too); ``unsigned`` is ours.
    assert devices[alice.device_id] == uploaded
    assert body["device_keys"][bob.user_id] == {}  # no keys uploaded
    assert body["device_keys"]["@nobody:test"] == {}
    # One device only.
    one = await query(client, bob, {alice.user_id: [phone.device_id, "NOPE"]})
    assert list(one["device_keys"][alice.user_id]) == [phone.device_id]


async def test_query_remote_users_are_failures(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    body = await query(client, alice, {"@bob:elsewhere.example": [], alice.user_id: []})
    assert list(body["failures"]) == ["elsewhere.example"]
    assert "@bob:elsewhere.example" not in body["device_keys"]


async def test_query_and_claim_bad_inputs(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    await assert_errors(
        client,
        "POST",
        f"{V3}/keys/query",
        [
            ({}, 400, "M_MISSING_PARAM"),
            ({"device_keys": []}, 400, "M_BAD_JSON"),
            ({"device_keys": {alice.user_id: "DEVICE"}}, 400, "M_BAD_JSON"),
            ({"device_keys": {"not-a-user": []}}, 400, "M_INVALID_PARAM"),
            ({"device_keys": {}, "timeout": "10"}, 400, "M_BAD_JSON"),
            ({"device_keys": {alice.user_id: ["A\u0000"]}}, 400, "M_BAD_JSON"),
        ],
        headers=alice.headers,
    )
    await assert_errors(
        client,
        "POST",
        f"{V3}/keys/claim",
        [
            ({}, 400, "M_MISSING_PARAM"),
            ({"one_time_keys": {alice.user_id: ["signed_curve25519"]}}, 400, "M_BAD_JSON"),
            ({"one_time_keys": {alice.user_id: {"DEV": 1}}}, 400, "M_BAD_JSON"),
            ({"one_time_keys": {"not-a-user": {}}}, 400, "M_INVALID_PARAM"),
            ({"one_time_keys": {alice.user_id: {"DEV": "alg\u0000"}}}, 400, "M_BAD_JSON"),
            ({"one_time_keys": {alice.user_id: {"\u0000": "alg"}}}, 400, "M_BAD_JSON"),
        ],
        headers=alice.headers,
    )
    for path in ("query", "claim"):
        r = await client.post(f"{V3}/keys/{path}", json={})
        assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_claim_in_upload_order_then_fallback(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    await upload(
        client, alice, {"device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(2)}
    )
    await upload(
        client,
        alice,
        {
            "one_time_keys": alice.one_time_keys(1, start=2),
            "fallback_keys": alice.fallback_key("F1"),
        },
    )
    wanted = {alice.user_id: {alice.device_id: "signed_curve25519"}}
    got = []
    for _ in range(3):
        keys = (await claim(client, bob, wanted))["one_time_keys"][alice.user_id]
        got.extend(keys[alice.device_id])
    # The first upload's keys go first (in any order among them), the second's after.
    assert sorted(got[:2]) == ["signed_curve25519:K0", "signed_curve25519:K1"]
    assert got[2] == "signed_curve25519:K2"
    synced = await sync(client, alice)
    assert synced["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert synced["device_unused_fallback_key_types"] == ["signed_curve25519"]
    # None left: the fallback key, as often as asked, and it is marked used.
    for _ in range(2):
        keys = (await claim(client, bob, wanted))["one_time_keys"][alice.user_id]
        fallback = keys[alice.device_id]["signed_curve25519:F1"]
        assert fallback["fallback"] is True
        assert fallback == alice.fallback_key("F1")["signed_curve25519:F1"] | {
            "key": fallback["key"],
            "signatures": fallback["signatures"],
        }
    assert (await sync(client, alice))["device_unused_fallback_key_types"] == []
    # Uploading the same fallback key again keeps it used; a new one is unused.
    same = (await claim(client, bob, wanted))["one_time_keys"][alice.user_id][alice.device_id]
    await upload(client, alice, {"fallback_keys": same})
    assert (await sync(client, alice))["device_unused_fallback_key_types"] == []
    await upload(client, alice, {"fallback_keys": alice.fallback_key("F2")})
    assert (await sync(client, alice))["device_unused_fallback_key_types"] == ["signed_curve25519"]
    keys = (await claim(client, bob, wanted))["one_time_keys"][alice.user_id]
    assert list(keys[alice.device_id]) == ["signed_curve25519:F2"]


async def test_claim_unknown_and_remote(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    body = await claim(
        client,
        alice,
        {
            alice.user_id: {"NOPE": "signed_curve25519"},
            "@nobody:test": {"X": "signed_curve25519"},
            "@bob:elsewhere.example": {"X": "signed_curve25519"},
        },
    )
    assert body == {
        "one_time_keys": {},
        "failures": {"elsewhere.example": body["failures"]["elsewhere.example"]},
    }


async def test_concurrent_claims_hand_out_each_key_once(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    claimers = [await new_device(client, f"user{i}") for i in range(4)]
    await upload(
        client,
        alice,
        {
            "device_keys": alice.device_keys(),
            "one_time_keys": alice.one_time_keys(5),
            "fallback_keys": alice.fallback_key("F"),
        },
    )
    wanted = {alice.user_id: {alice.device_id: "signed_curve25519"}}
    results = await asyncio.gather(*(claim(client, claimers[i % 4], wanted) for i in range(20)))
    handed = Counter(
        key for r in results for key in r["one_time_keys"][alice.user_id][alice.device_id]
    )
    assert handed == Counter(
        {f"signed_curve25519:K{i}": 1 for i in range(5)} | {"signed_curve25519:F": 15}
    )


async def test_concurrent_claims_of_the_last_key(client: httpx.AsyncClient) -> None:
    """No fallback key: exactly one claimer gets the last key, the others nothing."""
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    await upload(
        client, alice, {"device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(1)}
    )
    wanted = {alice.user_id: {alice.device_id: "signed_curve25519"}}
    results = await asyncio.gather(*(claim(client, bob, wanted) for _ in range(10)))
    winners = [r for r in results if r["one_time_keys"]]
    assert len(winners) == 1
    assert list(winners[0]["one_time_keys"][alice.user_id][alice.device_id]) == [
        "signed_curve25519:K0"
    ]


async def test_deleted_device_takes_its_keys(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    phone = await new_device(client, "alice", registered=True)
    await upload(
        client,
        phone,
        {
            "device_keys": phone.device_keys(),
            "one_time_keys": phone.one_time_keys(3),
            "fallback_keys": phone.fallback_key(),
        },
    )
    # Its counts are kept for its syncs: the deletion must not leave them to a successor.
    assert (await sync(client, phone))["device_one_time_keys_count"] == {"signed_curve25519": 3}
    r = await client.request(
        "DELETE",
        f"{V3}/devices/{phone.device_id}",
        json={
            "auth": {
                "type": "m.login.password",
                "password": DEFAULT_PASSWORD,
                "identifier": {"type": "m.id.user", "user": "alice"},
            }
        },
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    assert (await query(client, alice, {alice.user_id: []}))["device_keys"] == {alice.user_id: {}}
    body = await claim(client, alice, {alice.user_id: {phone.device_id: "signed_curve25519"}})
    assert body["one_time_keys"] == {}
    # The same device ID logged in again starts without keys.
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
    synced = await sync(client, again)
    assert synced["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert synced["device_unused_fallback_key_types"] == []


async def test_keys_changes_bad_inputs(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    for params, errcode in (
        ({"to": "s0"}, "M_MISSING_PARAM"),
        ({"from": "s0"}, "M_MISSING_PARAM"),
        ({"from": "nonsense", "to": "s0"}, "M_INVALID_PARAM"),
        ({"from": "s0", "to": "s1_x"}, "M_INVALID_PARAM"),
    ):
        r = await client.get(f"{V3}/keys/changes", params=params, headers=headers)
        assert (r.status_code, r.json()["errcode"]) == (400, errcode), params
    r = await client.get(f"{V3}/keys/changes", params={"from": "s0", "to": "s0"})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
