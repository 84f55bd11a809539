"""Cross-signing: /keys/device_signing/upload, /keys/signatures/upload and what /keys/query
shows of them to whom."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from nacl.signing import SigningKey

from tests.api.e2ee_helpers import V3, Device, new_device, public_of, query, sign, upload
from tests.helpers import DEFAULT_PASSWORD, assert_errors, login
from tests.openapi_schema import assert_response_matches


@dataclass
class CrossSigning:
    user_id: str
    master: SigningKey = field(default_factory=SigningKey.generate)
    self_signing: SigningKey = field(default_factory=SigningKey.generate)
    user_signing: SigningKey = field(default_factory=SigningKey.generate)

    def key(self, usage: str, **extra: Any) -> dict[str, Any]:
        private: SigningKey = getattr(self, usage)
        public = public_of(private)
        obj = {
            "user_id": self.user_id,
            "usage": [usage],
            "keys": {f"ed25519:{public}": public},
            **extra,
        }
        if usage != "master":
            obj = sign(obj, self.user_id, self.master, self.name("master"))
        return obj

    def name(self, usage: str) -> str:
        return f"ed25519:{public_of(getattr(self, usage))}"

    def public(self, usage: str) -> str:
        return public_of(getattr(self, usage))

    def all_keys(self) -> dict[str, Any]:
        return {f"{u}_key": self.key(u) for u in ("master", "self_signing", "user_signing")}


def _password_auth(user: str, session: str | None = None) -> dict[str, Any]:
    auth = {
        "type": "m.login.password",
        "password": DEFAULT_PASSWORD,
        "identifier": {"type": "m.id.user", "user": user},
    }
    return auth | ({"session": session} if session else {})


async def _device_signing(
    client: httpx.AsyncClient, device: Device, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(f"{V3}/keys/device_signing/upload", json=body, headers=device.headers)


async def _sign(client: httpx.AsyncClient, device: Device, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"{V3}/keys/signatures/upload", json=body, headers=device.headers)
    assert r.status_code == 200, r.text
    assert_response_matches("POST", r.request.url.raw_path.decode(), 200, r.json())
    failures: dict[str, Any] = r.json()["failures"]
    return failures


async def _setup(client: httpx.AsyncClient, localpart: str) -> tuple[Device, CrossSigning]:
    device = await new_device(client, localpart)
    await upload(client, device, {"device_keys": device.device_keys()})
    keys = CrossSigning(device.user_id)
    r = await _device_signing(client, device, keys.all_keys())
    assert r.status_code == 200, r.text
    return device, keys


async def test_first_upload_needs_no_uia_then_query(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    bob = await new_device(client, "bob")
    keys = CrossSigning(alice.user_id)
    r = await _device_signing(client, alice, keys.all_keys())
    assert r.status_code == 200, r.text
    assert_response_matches("POST", r.request.url.raw_path.decode(), 200, r.json())
    assert r.json() == {}
    # The same keys again (a retry after a lost response) need no authentication either.
    r = await _device_signing(client, alice, keys.all_keys())
    assert r.status_code == 200, r.text

    mine = await query(client, alice, {alice.user_id: []})
    assert mine["master_keys"][alice.user_id] == keys.key("master")
    assert mine["self_signing_keys"][alice.user_id] == keys.key("self_signing")
    assert mine["user_signing_keys"][alice.user_id] == keys.key("user_signing")
    theirs = await query(client, bob, {alice.user_id: []})
    assert theirs["master_keys"][alice.user_id] == keys.key("master")
    assert theirs["self_signing_keys"][alice.user_id] == keys.key("self_signing")
    assert "user_signing_keys" not in theirs  # only ever shown to its owner


async def test_replacing_keys_needs_password(client: httpx.AsyncClient) -> None:
    alice, keys = await _setup(client, "alice")
    new = CrossSigning(alice.user_id, master=keys.master)
    body = {"self_signing_key": new.key("self_signing")}
    r = await _device_signing(client, alice, body)
    assert r.status_code == 401
    # The spec documents no 401 here; it is the standard UIA challenge (no errcode).
    assert "errcode" not in r.json()
    assert r.json()["flows"] == [{"stages": ["m.login.password"]}]
    session = r.json()["session"]
    # A wrong password is a failed stage; the keys stay as they were.
    wrong = _password_auth("alice", session) | {"password": "wrong"}
    r = await _device_signing(client, alice, body | {"auth": wrong})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_FORBIDDEN")
    assert (await query(client, alice, {alice.user_id: []}))["self_signing_keys"][
        alice.user_id
    ] == keys.key("self_signing")
    r = await _device_signing(client, alice, body | {"auth": _password_auth("alice", session)})
    assert r.status_code == 200, r.text
    got = await query(client, alice, {alice.user_id: []})
    assert got["self_signing_keys"][alice.user_id] == new.key("self_signing")
    assert got["master_keys"][alice.user_id] == keys.key("master")
    # A new master key too needs the password.
    r = await _device_signing(client, alice, CrossSigning(alice.user_id).all_keys())
    assert r.status_code == 401


async def test_device_signing_bad_inputs(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    keys = CrossSigning(alice.user_id)
    other = CrossSigning(alice.user_id)
    master = keys.key("master")
    ssk = keys.key("self_signing")
    public = keys.public("master")
    await assert_errors(
        client,
        "POST",
        f"{V3}/keys/device_signing/upload",
        [
            (b"{", 400, "M_NOT_JSON"),
            ({}, 400, "M_MISSING_PARAM"),
            ({"master_key": {"usage": ["master"], "keys": {}}}, 400, "M_MISSING_PARAM"),
            ({"master_key": master | {"usage": "master"}}, 400, "M_BAD_JSON"),
            ({"master_key": master | {"user_id": "@bob:test"}}, 400, "M_INVALID_PARAM"),
            ({"master_key": master | {"usage": ["self_signing"]}}, 400, "M_INVALID_PARAM"),
            ({"master_key": master | {"keys": {}}}, 400, "M_INVALID_PARAM"),
            (
                {"master_key": master | {"keys": {f"ed25519:{public}": public, "ed25519:x": "x"}}},
                400,
                "M_INVALID_PARAM",
            ),
            ({"master_key": master | {"keys": {"ed25519:other": public}}}, 400, "M_INVALID_PARAM"),
            ({"master_key": master | {"keys": {"ed25519:abc": "abc"}}}, 400, "M_INVALID_PARAM"),
            # No master key to sign with, then one that did not sign it.
            ({"self_signing_key": ssk}, 400, "M_MISSING_PARAM"),
            (
                {"master_key": master, "self_signing_key": other.key("self_signing")},
                400,
                "M_INVALID_SIGNATURE",
            ),
            (
                {
                    "master_key": master,
                    "user_signing_key": keys.key("user_signing")
                    | {"usage": ["user_signing", "extra"], "signatures": {}},
                },
                400,
                "M_INVALID_SIGNATURE",
            ),
        ],
        headers=alice.headers,
    )
    r = await client.post(f"{V3}/keys/device_signing/upload", json=keys.all_keys())
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    # Nothing above was stored: the first real upload still needs no authentication.
    assert "master_keys" not in await query(client, alice, {alice.user_id: []})


async def test_key_id_of_a_device_is_refused(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    keys = CrossSigning(alice.user_id)
    await login(client, "alice", device_id=keys.public("master"))
    r = await _device_signing(client, alice, {"master_key": keys.key("master")})
    assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_signatures_visible_to_the_right_users(client: httpx.AsyncClient) -> None:
    alice, a_keys = await _setup(client, "alice")
    bob, b_keys = await _setup(client, "bob")
    carol = await new_device(client, "carol")
    # Alice's self-signing key signs her device; her device signs her master key; her
    # user-signing key signs Bob's master key.
    own_device = (await query(client, alice, {alice.user_id: [alice.device_id]}))["device_keys"][
        alice.user_id
    ][alice.device_id]
    own_device.pop("unsigned", None)
    device_signed = sign(
        own_device, alice.user_id, a_keys.self_signing, a_keys.name("self_signing")
    )
    master_signed = sign(a_keys.key("master"), alice.user_id, alice.key, alice.key_name)
    bob_signed = sign(
        b_keys.key("master"), alice.user_id, a_keys.user_signing, a_keys.name("user_signing")
    )
    failures = await _sign(
        client,
        alice,
        {
            alice.user_id: {alice.device_id: device_signed, a_keys.public("master"): master_signed},
            bob.user_id: {b_keys.public("master"): bob_signed},
        },
    )
    assert failures == {}

    for viewer in (alice, bob, carol):
        got = await query(client, viewer, {alice.user_id: [], bob.user_id: []})
        device = got["device_keys"][alice.user_id][alice.device_id]
        assert (
            device["signatures"][alice.user_id][a_keys.name("self_signing")]
            == device_signed["signatures"][alice.user_id][a_keys.name("self_signing")]
        )
        assert alice.key_name in got["master_keys"][alice.user_id]["signatures"][alice.user_id]
        bob_master = got["master_keys"][bob.user_id]
        # Users never see the signatures of another user's user-signing key.
        if viewer is alice:
            assert bob_master["signatures"][alice.user_id] == {
                a_keys.name("user_signing"): bob_signed["signatures"][alice.user_id][
                    a_keys.name("user_signing")
                ]
            }
        else:
            assert alice.user_id not in bob_master.get("signatures", {})


async def test_bad_signatures_are_reported_per_key(client: httpx.AsyncClient) -> None:
    alice, a_keys = await _setup(client, "alice")
    bob, b_keys = await _setup(client, "bob")
    phone = await new_device(client, "alice", registered=True)
    await upload(client, phone, {"device_keys": phone.device_keys()})
    devices = (await query(client, alice, {alice.user_id: []}))["device_keys"][alice.user_id]
    for d in devices.values():
        d.pop("unsigned", None)
    good = sign(
        devices[phone.device_id], alice.user_id, a_keys.self_signing, a_keys.name("self_signing")
    )
    # Signed by a key that is not Alice's self-signing key, under its name.
    forged = sign(
        devices[alice.device_id], alice.user_id, SigningKey.generate(), a_keys.name("self_signing")
    )
    # Bob's master key signed with Alice's self-signing key: not the key for that.
    wrong_key = sign(
        b_keys.key("master"), alice.user_id, a_keys.self_signing, a_keys.name("self_signing")
    )
    altered = sign(
        b_keys.key("master") | {"usage": ["master", "x"]},
        alice.user_id,
        a_keys.user_signing,
        a_keys.name("user_signing"),
    )
    failures = await _sign(
        client,
        alice,
        {
            alice.user_id: {phone.device_id: good, alice.device_id: forged, "NOSUCHKEY": good},
            bob.user_id: {b_keys.public("master"): wrong_key, "somekey": wrong_key},
            "@dave:elsewhere.example": {"key": wrong_key},
        },
    )
    codes = {
        user: {key: f["errcode"] for key, f in by_key.items()} for user, by_key in failures.items()
    }
    assert codes == {
        alice.user_id: {alice.device_id: "M_INVALID_SIGNATURE", "NOSUCHKEY": "M_NOT_FOUND"},
        bob.user_id: {b_keys.public("master"): "M_INVALID_SIGNATURE", "somekey": "M_NOT_FOUND"},
        "@dave:elsewhere.example": {"key": "M_NOT_FOUND"},
    }
    failures = await _sign(client, alice, {bob.user_id: {b_keys.public("master"): altered}})
    assert failures[bob.user_id][b_keys.public("master")]["errcode"] == "M_INVALID_PARAM"
    # The good signature was stored; the forged one was not.
    got = (await query(client, bob, {alice.user_id: []}))["device_keys"][alice.user_id]
    assert a_keys.name("self_signing") in got[phone.device_id]["signatures"][alice.user_id]
    assert a_keys.name("self_signing") not in got[alice.device_id]["signatures"][alice.user_id]


async def test_signatures_upload_bad_bodies(client: httpx.AsyncClient) -> None:
    alice = await new_device(client, "alice")
    await assert_errors(
        client,
        "POST",
        f"{V3}/keys/signatures/upload",
        [
            (b"nope", 400, "M_NOT_JSON"),
            ([], 400, "M_BAD_JSON"),
            ({alice.user_id: []}, 400, "M_BAD_JSON"),
            ({alice.user_id: {"KEY": "signature"}}, 400, "M_BAD_JSON"),
            ({alice.user_id: {"KEY": {"x": 1.5}}}, 400, "M_BAD_JSON"),
        ],
        headers=alice.headers,
    )
    r = await client.post(f"{V3}/keys/signatures/upload", json={})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    # A user ID that is not one is a failure of its own, not of the request.
    failures = await _sign(client, alice, {"not-a-user": {"KEY": {}}})
    assert failures["not-a-user"]["KEY"]["errcode"] == "M_INVALID_PARAM"
