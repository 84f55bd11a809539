"""Send-to-device messages: idempotent sends, delivery exactly once, kept while offline."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from homeserver.app import Homeserver
from homeserver.core.ids import UserID
from homeserver.core.types import Requester
from homeserver.e2ee.to_device import MAX_PER_SYNC
from homeserver.storage.to_device import ToDeviceStore
from tests.helpers import auth_header, login, register
from tests.openapi_schema import assert_response_matches

V3 = "/_matrix/client/v3"


async def _sync(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    r = await client.get(
        f"{V3}/sync", params={k: str(v) for k, v in params.items()}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    body: dict[str, Any] = r.json()
    return body


async def _send(
    client: httpx.AsyncClient,
    token: str,
    txn: str,
    messages: dict[str, Any],
    event_type: str = "org.example.ping",
) -> None:
    r = await client.put(
        f"{V3}/sendToDevice/{event_type}/{txn}",
        json={"messages": messages},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    assert_response_matches("PUT", r.request.url.raw_path.decode(), 200, r.json())
    assert r.json() == {}


def _to_device(body: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = body.get("to_device", {}).get("events", [])
    return events


async def _device(client: httpx.AsyncClient, localpart: str) -> tuple[str, str, str]:
    """A fresh login: (user_id, device_id, access_token)."""
    data = await login(client, localpart)
    return str(data["user_id"]), str(data["device_id"]), str(data["access_token"])


async def test_delivered_exactly_once(client: httpx.AsyncClient) -> None:
    alice, a_token = await register(client, "alice")
    await register(client, "bob")
    bob, bob_device, b_token = await _device(client, "bob")
    since = (await _sync(client, b_token))["next_batch"]
    await _send(client, a_token, "t1", {bob: {bob_device: {"n": 1}}})
    first = await _sync(client, b_token, since=since)
    assert _to_device(first) == [{"type": "org.example.ping", "sender": alice, "content": {"n": 1}}]
    # The next sync acknowledges it: never again.
    second = await _sync(client, b_token, since=first["next_batch"])
    assert _to_device(second) == []
    assert _to_device(await _sync(client, b_token, since=second["next_batch"])) == []
    assert _to_device(await _sync(client, b_token)) == []


async def test_repeated_since_delivers_again(client: httpx.AsyncClient) -> None:
    """A response lost on the way: the client retries with its old token and gets it again."""
    _, a_token = await register(client, "alice")
    await register(client, "bob")
    bob, bob_device, b_token = await _device(client, "bob")
    since = (await _sync(client, b_token))["next_batch"]
    await _send(client, a_token, "t1", {bob: {bob_device: {"n": 1}}})
    lost = await _sync(client, b_token, since=since)
    assert len(_to_device(lost)) == 1
    retried = await _sync(client, b_token, since=since)
    assert len(_to_device(retried)) == 1
    assert _to_device(await _sync(client, b_token, since=retried["next_batch"])) == []


async def test_idempotent_transaction(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    await register(client, "bob")
    bob, bob_device, b_token = await _device(client, "bob")
    for _ in range(3):
        await _send(client, a_token, "same-txn", {bob: {bob_device: {"n": 1}}})
    # The same txn ID from another device of the sender is another transaction.
    _, _, a2_token = await _device(client, "alice")
    await _send(client, a2_token, "same-txn", {bob: {bob_device: {"n": 2}}})
    events = _to_device(await _sync(client, b_token))
    assert [e["content"] for e in events] == [{"n": 1}, {"n": 2}]


async def test_kept_while_offline_and_per_device(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    bob, b1_token = await register(client, "bob")
    _, b2_device, b2_token = await _device(client, "bob")
    b1_since = (await _sync(client, b1_token))["next_batch"]
    await _send(client, a_token, "t1", {bob: {b2_device: {"for": "b2"}}})
    await _send(client, a_token, "t2", {bob: {b2_device: {"for": "b2", "n": 2}}})
    # The other device gets nothing and its syncs acknowledge nothing of b2's.
    for _ in range(2):
        body = await _sync(client, b1_token, since=b1_since)
        assert _to_device(body) == []
        b1_since = body["next_batch"]
    # b2 comes online (a fresh sync, no token): both, in order of arrival.
    body = await _sync(client, b2_token)
    assert [e["content"] for e in _to_device(body)] == [{"for": "b2"}, {"for": "b2", "n": 2}]
    assert _to_device(await _sync(client, b2_token, since=body["next_batch"])) == []


async def test_wildcard_reaches_every_device(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    bob, b1_token = await register(client, "bob")
    _, b2_device, b2_token = await _device(client, "bob")
    # An explicit device ID wins over "*" for that device.
    await _send(client, a_token, "t1", {bob: {"*": {"to": "all"}, b2_device: {"to": "b2"}}})
    assert [e["content"] for e in _to_device(await _sync(client, b1_token))] == [{"to": "all"}]
    assert [e["content"] for e in _to_device(await _sync(client, b2_token))] == [{"to": "b2"}]


async def test_unknown_targets_are_skipped(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    bob, b_token = await register(client, "bob")
    await _send(
        client,
        a_token,
        "t1",
        {
            "@nobody:test": {"X": {}},
            "@remote:elsewhere.example": {"Y": {}},
            bob: {"NOSUCHDEVICE": {"lost": True}},
        },
    )
    assert _to_device(await _sync(client, b_token)) == []


async def test_bad_bodies(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    url = f"{V3}/sendToDevice/org.example.ping/t1"
    cases: list[tuple[Any, int, str]] = [
        ({}, 400, "M_MISSING_PARAM"),
        ({"messages": []}, 400, "M_BAD_JSON"),
        ({"messages": {"@bob:test": []}}, 400, "M_BAD_JSON"),
        ({"messages": {"@bob:test": {"DEV": "text"}}}, 400, "M_BAD_JSON"),
        ({"messages": {"bob": {"DEV": {}}}}, 400, "M_INVALID_PARAM"),
        ([1], 400, "M_BAD_JSON"),
    ]
    for i, (body, status, errcode) in enumerate(cases):
        r = await client.put(f"{url}{i}", json=body, headers=auth_header(token))
        assert r.status_code == status, (body, r.text)
        assert r.json()["errcode"] == errcode, body
    r = await client.put(url, content=b"{oops", headers=auth_header(token))
    assert r.status_code == 400 and r.json()["errcode"] == "M_NOT_JSON"
    r = await client.put(url, json={"messages": {}})
    assert r.status_code == 401 and r.json()["errcode"] == "M_MISSING_TOKEN"


async def test_long_poll_wakes_on_to_device(client: httpx.AsyncClient) -> None:
    _, a_token = await register(client, "alice")
    await register(client, "bob")
    bob, bob_device, b_token = await _device(client, "bob")
    since = (await _sync(client, b_token))["next_batch"]
    waiting = asyncio.create_task(_sync(client, b_token, since=since, timeout=30_000))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await _send(client, a_token, "wake", {bob: {bob_device: {"hello": "there"}}})
    body = await asyncio.wait_for(waiting, 10)
    assert [e["content"] for e in _to_device(body)] == [{"hello": "there"}]


async def test_capped_per_sync_without_loss(hs: Homeserver, client: httpx.AsyncClient) -> None:
    alice, _ = await register(client, "alice")
    await register(client, "bob")
    bob, bob_device, b_token = await _device(client, "bob")
    sender = Requester(UserID(alice), "ALICEDEV", 0)
    total = MAX_PER_SYNC * 2 + 30
    for n in range(total):
        await hs.to_device.send(sender, "org.example.n", f"txn{n}", {bob: {bob_device: {"n": n}}})
    received: list[int] = []
    body = await _sync(client, b_token)
    while _to_device(body):
        assert len(_to_device(body)) <= MAX_PER_SYNC
        received.extend(e["content"]["n"] for e in _to_device(body))
        body = await _sync(client, b_token, since=body["next_batch"])
    assert received == list(range(total))


async def test_deleting_a_device_deletes_its_messages(
    hs: Homeserver, client: httpx.AsyncClient
) -> None:
    _, a_token = await register(client, "alice")
    await register(client, "bob")
    bob, bob_device, b_token = await _device(client, "bob")
    await _send(client, a_token, "t1", {bob: {bob_device: {"n": 1}}})
    store = ToDeviceStore(hs.db)
    assert await store.count_pending(bob, bob_device) == 1
    r = await client.post(f"{V3}/logout", json={}, headers=auth_header(b_token))
    assert r.status_code == 200, r.text
    assert await store.count_pending(bob, bob_device) == 0
