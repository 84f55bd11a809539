"""Rooms across two of our servers on loopback over TLS: a user of one joins a room of the
other by alias, is invited by it into another room and declines, and the resident server
serves its state to the joined one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.conftest import ServerProcess, free_port
from tests.e2e.test_federation_two_servers import start
from tests.tls_helpers import make_certificate


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
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


def register(c: httpx.Client, localpart: str) -> tuple[str, str]:
    r = c.post(
        "/_matrix/client/v3/register",
        json={"username": localpart, "password": "pw-1234567", "auth": {"type": "m.login.dummy"}},
    )
    assert r.status_code == 200, r.text
    return r.json()["user_id"], r.json()["access_token"]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def q(value: str) -> str:
    return quote(value, safe="")


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_join_by_alias_invite_and_decline_between_two_of_ours(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = servers
    with (
        httpx.Client(base_url=a.base_url, verify=a.verify, timeout=30) as ca,
        httpx.Client(base_url=b.base_url, verify=b.verify, timeout=30) as cb,
    ):
        alice, alice_token = register(ca, "alice")
        bob, bob_token = register(cb, "bob")
        r = ca.post(
            "/_matrix/client/v3/createRoom",
            headers=auth(alice_token),
            json={"preset": "public_chat", "name": "Lobby", "room_alias_name": "lobby"},
        )
        assert r.status_code == 200, r.text
        room_id = r.json()["room_id"]
        alias = f"#lobby:127.0.0.1:{a.port}"

        r = cb.post(f"/_matrix/client/v3/join/{q(alias)}", headers=auth(bob_token))
        assert r.status_code == 200, f"{r.text}\n{b.log_path.read_text()[-3000:]}"
        assert r.json()["room_id"] == room_id
        for c, token in ((ca, alice_token), (cb, bob_token)):
            r = c.get(f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members", headers=auth(token))
            assert set(r.json()["joined"]) == {alice, bob}, r.text
        r = cb.get(
            f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.name", headers=auth(bob_token)
        )
        assert r.json() == {"name": "Lobby"}, r.text
        # Joining again through the room's server is a no-op join on B's copy (B is in it).
        r = cb.post(f"/_matrix/client/v3/rooms/{q(room_id)}/join", headers=auth(bob_token))
        assert r.status_code == 200, r.text

        # Alice invites bob into a private room: B takes the invite; bob declines through A.
        r = ca.post(
            "/_matrix/client/v3/createRoom",
            headers=auth(alice_token),
            json={"preset": "private_chat", "name": "Private", "invite": [bob]},
        )
        assert r.status_code == 200, f"{r.text}\n{a.log_path.read_text()[-3000:]}"
        private = r.json()["room_id"]

        def invited() -> bool:
            r = cb.get("/_matrix/client/v3/sync", headers=auth(bob_token))
            return private in r.json().get("rooms", {}).get("invite", {})

        wait_for(invited, "bob's invite")
        r = cb.post(f"/_matrix/client/v3/rooms/{q(private)}/leave", headers=auth(bob_token))
        assert r.status_code == 200, f"{r.text}\n{b.log_path.read_text()[-3000:]}"
        r = ca.get(
            f"/_matrix/client/v3/rooms/{q(private)}/state/m.room.member/{q(bob)}",
            headers=auth(alice_token),
        )
        assert r.json()["membership"] == "leave", r.text
        assert not invited()

        # Invited again, bob accepts: B is not in the room, so it joins through the
        # inviter's server.
        r = ca.post(
            f"/_matrix/client/v3/rooms/{q(private)}/invite",
            headers=auth(alice_token),
            json={"user_id": bob},
        )
        assert r.status_code == 200, r.text
        wait_for(invited, "bob's second invite")
        r = cb.post(f"/_matrix/client/v3/rooms/{q(private)}/join", headers=auth(bob_token))
        assert r.status_code == 200, f"{r.text}\n{b.log_path.read_text()[-3000:]}"
        for c, token in ((ca, alice_token), (cb, bob_token)):
            r = c.get(f"/_matrix/client/v3/rooms/{q(private)}/joined_members", headers=auth(token))
            assert set(r.json()["joined"]) == {alice, bob}, r.text
        r = cb.get("/_matrix/client/v3/sync", headers=auth(bob_token))
        rooms = r.json()["rooms"]
        assert private in rooms["join"] and private not in rooms.get("invite", {})
