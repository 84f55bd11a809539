"""Two of our servers on loopback, over TLS with a test CA, under different server names
(an IP literal with a port, and a hostname with a port): each fetches the other's keys,
answers the other's signed requests and refuses badly signed ones."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json

from homeserver.core.clock import SystemClock
from homeserver.crypto.signing import load_or_create_signing_key
from homeserver.federation.client import FederationClient, FederationError, ssl_context
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
from tests.e2e.conftest import ServerProcess, free_port
from tests.tls_helpers import make_certificate

LOOPBACK = ["127.0.0.1/32", "::1/128"]


def start(workdir: Path, server_name: str, port: int, tls_dir: Path) -> ServerProcess:
    workdir.mkdir()
    proc = ServerProcess(
        workdir,
        None,
        server_name=server_name,
        listen={
            "host": "127.0.0.1",
            "port": port,
            "tls_certificate_path": str(tls_dir / "cert.pem"),
            "tls_private_key_path": str(tls_dir / "key.pem"),
        },
        outbound={"allow_addresses": LOOPBACK},
        federation={"tls_ca_bundle": str(tls_dir / "ca.pem"), "request_timeout_ms": 10_000},
    )
    proc.verify = ssl_context(str(tls_dir / "ca.pem"))
    proc.start()
    return proc


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    tls = tmp_path / "tls"
    make_certificate(tls, dns_names=("localhost",), ips=("127.0.0.1", "::1"))
    port_a, port_b = free_port(), free_port()
    a = start(tmp_path / "a", f"127.0.0.1:{port_a}", port_a, tls)
    try:
        b = start(tmp_path / "b", f"localhost:{port_b}", port_b, tls)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def register(server: ServerProcess, localpart: str, displayname: str) -> str:
    with httpx.Client(base_url=server.base_url, verify=server.verify, timeout=10) as c:
        r = c.post(
            "/_matrix/client/v3/register",
            json={
                "username": localpart,
                "password": "pw-1234567",
                "auth": {"type": "m.login.dummy"},
            },
        )
        assert r.status_code == 200, r.text
        token = str(r.json()["access_token"])
        user_id = r.json()["user_id"]
        r = c.put(
            f"/_matrix/client/v3/profile/{user_id}/displayname",
            headers={"Authorization": f"Bearer {token}"},
            json={"displayname": displayname},
        )
        assert r.status_code == 200, r.text
        return token


def get(server: ServerProcess, path: str, token: str | None = None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.base_url, verify=server.verify, timeout=20) as c:
        return c.get(path, headers=headers)


def keys_of(server: ServerProcess) -> dict[str, str]:
    body = get(server, "/_matrix/key/v2/server").json()
    return {kid: v["key"] for kid, v in body["verify_keys"].items()}


def check_signed_by(obj: dict[str, object], server_name: str, keys: dict[str, str]) -> None:
    for kid, key in keys.items():
        alg, version = kid.split(":")
        verify_signed_json(obj, server_name, decode_verify_key_base64(alg, version, key))


def test_two_servers_fetch_keys_and_sign_requests(
    two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    a, b = two_servers
    name_a, name_b = f"127.0.0.1:{a.port}", f"localhost:{b.port}"
    alice = register(a, "alice", "Alice")
    bob = register(b, "bob", "Bob")

    # Each server asks the other for a profile: a signed request, whose receiver fetches the
    # sender's keys (discovery, TLS with the test CA, loopback allowed) to verify it.
    r = get(a, f"/_matrix/client/v3/profile/@bob:{name_b}", alice)
    assert r.status_code == 200, r.text
    assert r.json() == {"displayname": "Bob"}
    r = get(b, f"/_matrix/client/v3/profile/@alice:{name_a}", bob)
    assert r.status_code == 200, r.text
    assert r.json() == {"displayname": "Alice"}
    r = get(a, f"/_matrix/client/v3/profile/@nobody:{name_b}", alice)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    # As notaries: each serves the other's keys (held since it verified its request), signed
    # by the other and co-signed by itself.
    keys_a, keys_b = keys_of(a), keys_of(b)
    [answer] = get(a, f"/_matrix/key/v2/query/{name_b}").json()["server_keys"]
    check_signed_by(answer, name_b, keys_b)
    check_signed_by(answer, name_a, keys_a)
    [answer] = get(b, f"/_matrix/key/v2/query/{name_a}").json()["server_keys"]
    check_signed_by(answer, name_a, keys_a)
    check_signed_by(answer, name_b, keys_b)

    # End-to-end keys across the servers: alice's device keys and one-time key, uploaded to
    # A, are queried and claimed by bob through B.
    exchange_e2e_keys(a, alice, b, bob)

    # Signed requests made as each server (its key, from its data directory) to the other's
    # /version and /query/profile, through our client: discovery, TLS, X-Matrix.
    asyncio.run(signed_requests_as(tmp_path, name_a, tmp_path / "a", name_b, b, "@bob", "Bob"))
    asyncio.run(signed_requests_as(tmp_path, name_b, tmp_path / "b", name_a, a, "@alice", "Alice"))


async def signed_requests_as(
    tmp_path: Path,
    origin: str,
    origin_dir: Path,
    destination: str,
    target: ServerProcess,
    localpart: str,
    displayname: str,
) -> None:
    user_id = f"{localpart}:{destination}"
    uri = "/_matrix/federation/v1/query/profile?" + urlencode({"user_id": user_id})
    outbound = Outbound(AddressPolicy(LOOPBACK))
    tls = ssl_context(str(tmp_path / "tls" / "ca.pem"))
    async with outbound.client(timeout_s=10, verify=tls) as wk_client:
        resolver = ServerResolver(
            WellKnownResolver(HttpsWellKnownFetch(wk_client), SystemClock()), DnsSrvLookup()
        )
        key = load_or_create_signing_key(origin_dir / "data" / "signing.key")
        local = LocalKeys(origin, key, {}, SystemClock(), 60_000)
        client = FederationClient(local, resolver, outbound, ServerPolicy(), tls=tls, timeout_s=10)
        try:
            version = await client.get_json(destination, "/_matrix/federation/v1/version")
            assert version["server"]["name"] == "homeserver"
            profile = await client.get_json(
                destination,
                "/_matrix/federation/v1/query/profile",
                query={"user_id": user_id, "field": "displayname"},
            )
            assert profile == {"displayname": displayname}
            # A server nobody answers for: an error, not a hang.
            with pytest.raises(FederationError) as e:
                await client.get_json("localhost:1", "/x")
            assert e.value.status is None
            # Correctly signed by the origin, but for another destination.
            wrong = client.authorization("someone.else", "GET", uri, None)
            right = client.authorization(destination, "GET", uri, None)
        finally:
            await client.aclose()
    with httpx.Client(base_url=target.base_url, verify=target.verify, timeout=10) as c:
        for headers in ({"Authorization": wrong}, {}):
            r = c.get(uri, headers=headers)
            assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")
        r = c.get(uri, headers={"Authorization": right})
        assert r.json() == {"displayname": displayname}


def exchange_e2e_keys(a: ServerProcess, alice: str, b: ServerProcess, bob: str) -> None:
    from tests.api.e2ee_helpers import Device

    with httpx.Client(base_url=a.base_url, verify=a.verify, timeout=20) as c:
        me = c.get(
            "/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {alice}"}
        ).json()
        device = Device(me["user_id"], me["device_id"], alice)
        device_keys = device.device_keys()
        otks = device.one_time_keys(1)
        r = c.post(
            "/_matrix/client/v3/keys/upload",
            json={"device_keys": device_keys, "one_time_keys": otks},
            headers=device.headers,
        )
        assert r.status_code == 200, r.text
    with httpx.Client(base_url=b.base_url, verify=b.verify, timeout=20) as c:
        headers = {"Authorization": f"Bearer {bob}"}
        r = c.post(
            "/_matrix/client/v3/keys/query",
            json={"device_keys": {device.user_id: []}},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        assert r.json()["failures"] == {}
        assert r.json()["device_keys"] == {device.user_id: {device.device_id: device_keys}}
        r = c.post(
            "/_matrix/client/v3/keys/claim",
            json={"one_time_keys": {device.user_id: {device.device_id: "signed_curve25519"}}},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "one_time_keys": {device.user_id: {device.device_id: otks}},
            "failures": {},
        }
