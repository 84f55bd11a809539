"""Federation with Synapse (the pinned release, installed from PyPI into its own virtualenv)
on loopback over TLS with a test CA: a Synapse user joins a room on our server (Synapse
runs make_join and send_join against us), and each server then shows both members."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from homeserver.federation.client import ssl_context
from tests.e2e.conftest import ServerProcess, free_port
from tests.synapse_helpers import LOOPBACK_IPS, SynapseProcess
from tests.tls_helpers import make_certificate

LOOPBACK = ["127.0.0.1/32", "::1/128"]


@pytest.fixture
def ours_and_synapse(tmp_path: Path) -> Iterator[tuple[ServerProcess, SynapseProcess]]:
    tls = tmp_path / "tls"
    make_certificate(tls, dns_names=("localhost",), ips=tuple(LOOPBACK_IPS))
    port = free_port()
    workdir = tmp_path / "ours"
    workdir.mkdir()
    ours = ServerProcess(
        workdir,
        None,
        server_name=f"localhost:{port}",
        listen={
            "host": "127.0.0.1",
            "port": port,
            "tls_certificate_path": str(tls / "cert.pem"),
            "tls_private_key_path": str(tls / "key.pem"),
        },
        outbound={"allow_addresses": LOOPBACK},
        federation={"tls_ca_bundle": str(tls / "ca.pem"), "request_timeout_ms": 20_000},
    )
    ours.verify = ssl_context(str(tls / "ca.pem"))
    synapse = SynapseProcess(tmp_path / "synapse", free_port(), tls)
    ours.start()
    try:
        synapse.start()
        try:
            yield ours, synapse
        finally:
            synapse.stop()
    finally:
        ours.stop()


def client(base_url: str, verify: object) -> httpx.Client:
    return httpx.Client(base_url=base_url, verify=verify, timeout=60)  # type: ignore[arg-type]


def register(c: httpx.Client, localpart: str) -> tuple[str, str]:
    body: dict[str, object] = {
        "username": localpart,
        "password": "pw-1234567-long",
        "auth": {"type": "m.login.dummy"},
    }
    r = c.post("/_matrix/client/v3/register", json=body)
    if r.status_code == 401 and "session" in r.json():
        body["auth"] = {"type": "m.login.dummy", "session": r.json()["session"]}
        r = c.post("/_matrix/client/v3/register", json=body)
    assert r.status_code == 200, r.text
    return r.json()["user_id"], r.json()["access_token"]


def joined_members(c: httpx.Client, token: str, room_id: str) -> set[str]:
    r = c.get(
        f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/joined_members",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    return set(r.json()["joined"])


def test_synapse_user_joins_a_room_on_our_server(
    ours_and_synapse: tuple[ServerProcess, SynapseProcess],
) -> None:
    ours, synapse = ours_and_synapse
    our_name = f"localhost:{ours.port}"
    with client(ours.base_url, ours.verify) as a, client(synapse.base_url, synapse.verify) as s:
        alice, alice_token = register(a, "alice")
        bob, bob_token = register(s, "bob")
        assert bob == f"@bob:{synapse.server_name}"
        r = a.post(
            "/_matrix/client/v3/createRoom",
            headers={"Authorization": f"Bearer {alice_token}"},
            json={"preset": "public_chat", "name": "Across servers"},
        )
        assert r.status_code == 200, r.text
        room_id = r.json()["room_id"]

        # Synapse asks us for a join template, signs it and sends it back (send_join v2),
        # then builds the room from the state and auth chain we answer.
        r = s.post(
            f"/_matrix/client/v3/join/{quote(room_id, safe='')}",
            params={"server_name": our_name},
            headers={"Authorization": f"Bearer {bob_token}"},
            json={},
        )
        assert r.status_code == 200, (
            f"{r.text}\n{synapse.log_tail()}\n{ours.log_path.read_text()[-3000:]}"
        )
        assert r.json()["room_id"] == room_id

        # Both servers now have both members.
        assert joined_members(a, alice_token, room_id) == {alice, bob}
        assert joined_members(s, bob_token, room_id) == {alice, bob}
        r = s.get(
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state/m.room.name",
            headers={"Authorization": f"Bearer {bob_token}"},
        )
        assert r.status_code == 200 and r.json() == {"name": "Across servers"}, r.text
        # Alice's sync shows bob's join in the room's timeline.
        deadline = time.monotonic() + 10
        seen = False
        while not seen and time.monotonic() < deadline:
            r = a.get("/_matrix/client/v3/sync", headers={"Authorization": f"Bearer {alice_token}"})
            events = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
            seen = any(e["type"] == "m.room.member" and e["state_key"] == bob for e in events)
        assert seen
