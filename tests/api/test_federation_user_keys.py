"""Our users' end-to-end keys served to other servers: POST /user/keys/query and
/user/keys/claim over federation."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from tests.api.e2ee_helpers import new_device, upload
from tests.api.test_cross_signing import CrossSigning, _device_signing
from tests.federation_helpers import FakeRemote
from tests.helpers import assert_errors

FED = "/_matrix/federation/v1"


async def post_signed(
    client: httpx.AsyncClient, remote: FakeRemote, path: str, body: Any
) -> httpx.Response:
    header = remote.authorization("test", "POST", path, body)
    return await client.post(
        path, content=json.dumps(body).encode(), headers={"Authorization": header}
    )


async def test_query_serves_public_keys_only(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    _, client = fed
    alice = await new_device(client, "alice")
    device_keys = alice.device_keys()
    await upload(client, alice, {"device_keys": device_keys})
    await client.put(
        f"/_matrix/client/v3/devices/{alice.device_id}",
        json={"display_name": "Alice's phone"},
        headers=alice.headers,
    )
    cross = CrossSigning(alice.user_id)
    assert (await _device_signing(client, alice, cross.all_keys())).status_code == 200

    path = f"{FED}/user/keys/query"
    body = {"device_keys": {alice.user_id: [], "@bob:elsewhere": [], "@ghost:test": []}}
    r = await post_signed(client, remote, path, body)
    assert r.status_code == 200, r.text
    data = r.json()
    # Only our users; the device keys as uploaded, without the device's display name.
    assert set(data["device_keys"]) == {alice.user_id, "@ghost:test"}
    assert data["device_keys"][alice.user_id] == {alice.device_id: device_keys}
    assert data["device_keys"]["@ghost:test"] == {}
    assert data["master_keys"][alice.user_id] == cross.key("master")
    assert data["self_signing_keys"][alice.user_id] == cross.key("self_signing")
    assert "user_signing_keys" not in data  # never leaves its owner
    assert "failures" not in data
    # One device by ID.
    body = {"device_keys": {alice.user_id: [alice.device_id, "NOPE"]}}
    r = await post_signed(client, remote, path, body)
    assert list(r.json()["device_keys"][alice.user_id]) == [alice.device_id]


async def test_claim_takes_one_time_keys(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    _, client = fed
    alice = await new_device(client, "alice")
    otks = alice.one_time_keys(2)
    await upload(client, alice, {"device_keys": alice.device_keys(), "one_time_keys": otks})
    path = f"{FED}/user/keys/claim"
    body = {
        "one_time_keys": {
            alice.user_id: {alice.device_id: "signed_curve25519"},
            "@bob:elsewhere": {"DEV": "signed_curve25519"},
        }
    }
    claimed = []
    for _ in range(3):
        r = await post_signed(client, remote, path, body)
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"one_time_keys"}
        claimed.append(r.json()["one_time_keys"].get(alice.user_id, {}))
    got = [next(iter(c[alice.device_id])) for c in claimed[:2]]
    assert sorted(got) == sorted(otks)  # each key once
    assert claimed[2] == {}  # none left (no fallback key uploaded)


async def test_unsigned_and_bad_bodies(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    _, client = fed
    for path in (f"{FED}/user/keys/query", f"{FED}/user/keys/claim"):
        r = await client.post(path, json={"device_keys": {}, "one_time_keys": {}})
        assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")
    path = f"{FED}/user/keys/query"
    cases: list[tuple[Any, int, str]] = [
        ([], 400, "M_BAD_JSON"),
        ({}, 400, "M_MISSING_PARAM"),
        ({"device_keys": []}, 400, "M_BAD_JSON"),
        ({"device_keys": {"@a:test": "DEV"}}, 400, "M_BAD_JSON"),
        ({"device_keys": {"@a:test": [1]}}, 400, "M_BAD_JSON"),
        ({"device_keys": {"not-a-user": []}}, 400, "M_INVALID_PARAM"),
        ({"device_keys": {f"@u{i}:test": [] for i in range(1001)}}, 413, "M_TOO_LARGE"),
    ]
    for body, status, errcode in cases:
        r = await post_signed(client, remote, path, body)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), body
    path = f"{FED}/user/keys/claim"
    cases = [
        ({}, 400, "M_MISSING_PARAM"),
        ({"one_time_keys": {"@a:test": ["DEV"]}}, 400, "M_BAD_JSON"),
        ({"one_time_keys": {"@a:test": {"DEV": 5}}}, 400, "M_BAD_JSON"),
        ({"one_time_keys": {"bad": {}}}, 400, "M_INVALID_PARAM"),
    ]
    for body, status, errcode in cases:
        r = await post_signed(client, remote, path, body)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), body
    # A body that is not JSON, or past the limits every client body is held to (depth,
    # integer range, NUL), is refused before anything else.
    deep = b'{"one_time_keys": {}, "a": ' + b"[" * 101 + b"]" * 101 + b"}"
    await assert_errors(
        client,
        "POST",
        path,
        [
            (b"{nope", 400, "M_NOT_JSON"),
            (deep, 400, "M_BAD_JSON"),
            (b'{"one_time_keys": {}, "n": 9007199254740992}', 400, "M_BAD_JSON"),
            (b'{"one_time_keys": {"@a\\u0000:test": {}}}', 400, "M_BAD_JSON"),
        ],
    )


async def test_client_query_and_claim_of_remote_users(
    fed: tuple[Homeserver, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    hs, client = fed
    alice = await new_device(client, "alice")
    good_device = {
        "user_id": "@bob:ok.test",
        "device_id": "BOBDEV",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {"ed25519:BOBDEV": "abc"},
        "signatures": {"@bob:ok.test": {"ed25519:BOBDEV": "sig"}},
    }
    master = {"user_id": "@bob:ok.test", "usage": ["master"], "keys": {"ed25519:M": "M"}}
    asked: list[tuple[str, Any]] = []

    async def query_user_keys(server_name: str, wanted: Any) -> Any:
        asked.append((server_name, wanted))
        if server_name == "down.test":
            from homeserver.federation.client import FederationError

            raise FederationError(server_name, "unreachable")
        if server_name == "slow.test":
            import asyncio

            await asyncio.sleep(5)
        return {
            "device_keys": {
                "@bob:ok.test": {
                    "BOBDEV": good_device,
                    "LIAR": {**good_device, "device_id": "OTHER"},  # keys of another device
                    "FLOAT": {**good_device, "device_id": "FLOAT", "x": 1.5},
                },
                "@carol:ok.test": {"C": "not an object"},
                "@mallory:elsewhere.test": {"M": good_device},  # not this server's user
            },
            "master_keys": {
                "@bob:ok.test": master,
                "@alice:test": {**master, "user_id": "@alice:test"},  # one of ours: ignored
            },
            "user_signing_keys": {"@bob:ok.test": master},  # never shown to another user
        }

    async def claim_user_keys(server_name: str, wanted: Any) -> Any:
        return {
            "one_time_keys": {
                "@bob:ok.test": {"BOBDEV": {"signed_curve25519:AAA": {"key": "k"}}},
                "@eve:ok.test": {"EVE": {"signed_curve25519:B": {"key": "k"}}},  # not asked
            }
        }

    monkeypatch.setattr(hs.federation_queries, "query_user_keys", query_user_keys)
    monkeypatch.setattr(hs.federation_queries, "claim_user_keys", claim_user_keys)
    r = await client.post(
        "/_matrix/client/v3/keys/query",
        json={
            "device_keys": {
                "@bob:ok.test": [],
                "@carol:ok.test": [],
                "@dan:down.test": [],
                "@sam:slow.test": [],
            },
            "timeout": 200,
        },
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["device_keys"] == {"@bob:ok.test": {"BOBDEV": good_device}, "@carol:ok.test": {}}
    assert body["master_keys"] == {"@bob:ok.test": master}
    assert "user_signing_keys" not in body
    assert body["failures"] == {
        "down.test": {"status": 503, "message": "The server could not be reached"},
        "slow.test": {"status": 504, "message": "The server did not answer in time"},
    }
    assert ("ok.test", {"@bob:ok.test": [], "@carol:ok.test": []}) in asked

    r = await client.post(
        "/_matrix/client/v3/keys/claim",
        json={"one_time_keys": {"@bob:ok.test": {"BOBDEV": "signed_curve25519"}}},
        headers=alice.headers,
    )
    assert r.json() == {
        "one_time_keys": {"@bob:ok.test": {"BOBDEV": {"signed_curve25519:AAA": {"key": "k"}}}},
        "failures": {},
    }


async def test_user_devices(fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote) -> None:
    _, client = fed
    alice = await new_device(client, "alice")
    device_keys = alice.device_keys()
    await upload(client, alice, {"device_keys": device_keys})
    cross = CrossSigning(alice.user_id)
    assert (await _device_signing(client, alice, cross.all_keys())).status_code == 200
    uri = f"{FED}/user/devices/%40alice%3Atest"
    headers = {"Authorization": remote.authorization("test", "GET", uri)}
    r = await client.get(uri, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == alice.user_id
    assert body["devices"] == [{"device_id": alice.device_id, "keys": device_keys}]
    assert body["master_key"] == cross.key("master")
    assert body["self_signing_key"] == cross.key("self_signing")
    assert "user_signing_key" not in body
    first = body["stream_id"]
    assert isinstance(first, int) and first > 0
    # A new device with keys: a later stream_id.
    second = await new_device(client, "alice", registered=True)
    await upload(client, second, {"device_keys": second.device_keys()})
    r = await client.get(uri, headers=headers)
    assert r.json()["stream_id"] > first
    assert len(r.json()["devices"]) == 2
    # Unknown user: no devices; not ours, not a user ID, unsigned: errors.
    uri = f"{FED}/user/devices/%40ghost%3Atest"
    r = await client.get(uri, headers={"Authorization": remote.authorization("test", "GET", uri)})
    assert r.json() == {"user_id": "@ghost:test", "stream_id": 0, "devices": []}
    for uri, status, errcode in (
        (f"{FED}/user/devices/%40bob%3Aelsewhere", 400, "M_INVALID_PARAM"),
        (f"{FED}/user/devices/nobody", 400, "M_INVALID_PARAM"),
    ):
        auth = {"Authorization": remote.authorization("test", "GET", uri)}
        r = await client.get(uri, headers=auth)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), uri
    r = await client.get(f"{FED}/user/devices/%40alice%3Atest")
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")
