"""Helpers for the end-to-end encryption API tests: devices with real ed25519 keys.

A ``Device`` holds a private ed25519 key and signs JSON exactly as clients do (spec,
appendices "Signing JSON"), so that the server's signature checks run against real data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import httpx
from canonicaljson import encode_canonical_json
from nacl.signing import SigningKey
from unpaddedbase64 import encode_base64

from tests.helpers import auth_header, login, register
from tests.openapi_schema import assert_response_matches

V3 = "/_matrix/client/v3"
ALGORITHMS = ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"]


def public_of(key: SigningKey) -> str:
    return encode_base64(bytes(key.verify_key))


def sign(obj: dict[str, Any], user_id: str, key: SigningKey, key_name: str) -> dict[str, Any]:
    """A copy of ``obj`` with ``signatures[user_id][key_name]`` added."""
    signable = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signature = encode_base64(key.sign(encode_canonical_json(signable)).signature)
    out = copy.deepcopy(obj)
    out.setdefault("signatures", {}).setdefault(user_id, {})[key_name] = signature
    return out


@dataclass
class Device:
    user_id: str
    device_id: str
    token: str
    key: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def headers(self) -> dict[str, str]:
        return auth_header(self.token)

    @property
    def ed25519(self) -> str:
        return public_of(self.key)

    @property
    def key_name(self) -> str:
        return f"ed25519:{self.device_id}"

    def device_keys(self, **extra: Any) -> dict[str, Any]:
        """The device's keys, signed by itself."""
        keys = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ALGORITHMS,
            "keys": {
                self.key_name: self.ed25519,
                f"curve25519:{self.device_id}": public_of(SigningKey.generate()),
            },
            **extra,
        }
        return sign(keys, self.user_id, self.key, self.key_name)

    def one_time_keys(
        self, count: int, start: int = 0, algorithm: str = "signed_curve25519"
    ) -> dict[str, Any]:
        return {
            f"{algorithm}:K{i}": sign(
                {"key": public_of(SigningKey.generate())}, self.user_id, self.key, self.key_name
            )
            for i in range(start, start + count)
        }

    def fallback_key(self, key_id: str = "F1") -> dict[str, Any]:
        key = {"key": public_of(SigningKey.generate()), "fallback": True}
        return {f"signed_curve25519:{key_id}": sign(key, self.user_id, self.key, self.key_name)}


async def new_device(
    client: httpx.AsyncClient, localpart: str, *, registered: bool = False
) -> Device:
    """Register ``localpart`` (unless ``registered``) and log a new device in."""
    if not registered:
        await register(client, localpart)
    data = await login(client, localpart)
    return Device(str(data["user_id"]), str(data["device_id"]), str(data["access_token"]))


async def upload(client: httpx.AsyncClient, device: Device, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"{V3}/keys/upload", json=body, headers=device.headers)
    assert r.status_code == 200, r.text
    assert_response_matches("POST", r.request.url.raw_path.decode(), 200, r.json())
    data: dict[str, Any] = r.json()
    return data


async def query(
    client: httpx.AsyncClient, device: Device, users: dict[str, list[str]]
) -> dict[str, Any]:
    r = await client.post(f"{V3}/keys/query", json={"device_keys": users}, headers=device.headers)
    assert r.status_code == 200, r.text
    assert_response_matches("POST", r.request.url.raw_path.decode(), 200, r.json())
    data: dict[str, Any] = r.json()
    return data


async def claim(
    client: httpx.AsyncClient, device: Device, wanted: dict[str, dict[str, str]]
) -> dict[str, Any]:
    r = await client.post(
        f"{V3}/keys/claim", json={"one_time_keys": wanted}, headers=device.headers
    )
    assert r.status_code == 200, r.text
    assert_response_matches("POST", r.request.url.raw_path.decode(), 200, r.json())
    data: dict[str, Any] = r.json()
    return data


async def sync(client: httpx.AsyncClient, device: Device, **params: Any) -> dict[str, Any]:
    r = await client.get(
        f"{V3}/sync", params={k: str(v) for k, v in params.items()}, headers=device.headers
    )
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    data: dict[str, Any] = r.json()
    return data


async def create_room(
    client: httpx.AsyncClient, device: Device, invite: list[str] | None = None, **extra: Any
) -> str:
    r = await client.post(
        f"{V3}/createRoom", json={"invite": invite or [], **extra}, headers=device.headers
    )
    assert r.status_code == 200, r.text
    return str(r.json()["room_id"])


async def join(client: httpx.AsyncClient, device: Device, room_id: str) -> None:
    r = await client.post(f"{V3}/join/{room_id}", json={}, headers=device.headers)
    assert r.status_code == 200, r.text


async def leave(client: httpx.AsyncClient, device: Device, room_id: str) -> None:
    r = await client.post(f"{V3}/rooms/{room_id}/leave", json={}, headers=device.headers)
    assert r.status_code == 200, r.text
