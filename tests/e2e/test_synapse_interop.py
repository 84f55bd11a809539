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
        sent = []
        for n in range(3):
            r = a.put(
                f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/t{n}",
                headers={"Authorization": f"Bearer {alice_token}"},
                json={"msgtype": "m.text", "body": f"before bob {n}"},
            )
            assert r.status_code == 200, r.text
            sent.append(r.json()["event_id"])

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
        # Bob pages back past his join: Synapse backfills from us (GET /backfill), and the
        # history is shared, so he sees alice's messages from before he joined.
        r = s.get(
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages",
            params={"dir": "b", "limit": 30},
            headers={"Authorization": f"Bearer {bob_token}"},
        )
        assert r.status_code == 200, r.text
        seen_ids = [e["event_id"] for e in r.json()["chunk"]]
        assert set(sent) <= set(seen_ids), f"{seen_ids}\n{synapse.log_tail()}"
        # Bob knocks on another room of alice's (make_knock, send_knock against us).
        r = a.post(
            "/_matrix/client/v3/createRoom",
            headers={"Authorization": f"Bearer {alice_token}"},
            json={
                "name": "Knock here",
                "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
            },
        )
        assert r.status_code == 200, r.text
        knock_room = r.json()["room_id"]
        r = s.post(
            f"/_matrix/client/v3/knock/{quote(knock_room, safe='')}",
            params={"via": our_name},
            headers={"Authorization": f"Bearer {bob_token}"},
            json={},
        )
        assert r.status_code == 200, f"{r.text}\n{synapse.log_tail()}"
        r = a.get(
            f"/_matrix/client/v3/rooms/{quote(knock_room, safe='')}/state/m.room.member/"
            + quote(bob),
            headers={"Authorization": f"Bearer {alice_token}"},
        )
        assert r.status_code == 200 and r.json()["membership"] == "knock", r.text
        # Alice's sync shows bob's join in the room's timeline.
        deadline = time.monotonic() + 10
        seen = False
        while not seen and time.monotonic() < deadline:
            r = a.get("/_matrix/client/v3/sync", headers={"Authorization": f"Bearer {alice_token}"})
            events = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
            seen = any(e["type"] == "m.room.member" and e["state_key"] == bob for e in events)
        assert seen


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sync_rooms(c: httpx.Client, token: str, section: str) -> dict[str, object]:
    r = c.get("/_matrix/client/v3/sync", headers=auth(token))
    assert r.status_code == 200, r.text
    rooms: dict[str, object] = r.json().get("rooms", {}).get(section, {})
    return rooms


def wait_for(check: object, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_our_user_joins_invites_and_declines_on_synapse(
    ours_and_synapse: tuple[ServerProcess, SynapseProcess],
) -> None:
    ours, synapse = ours_and_synapse
    with client(ours.base_url, ours.verify) as a, client(synapse.base_url, synapse.verify) as s:
        alice, alice_token = register(a, "alice")
        bob, bob_token = register(s, "bob")
        carol, carol_token = register(s, "carol")
        r = s.post(
            "/_matrix/client/v3/createRoom",
            headers=auth(bob_token),
            json={"preset": "public_chat", "name": "On Synapse", "room_alias_name": "lobby"},
        )
        assert r.status_code == 200, r.text
        room_id = r.json()["room_id"]

        # By alias: our server asks Synapse for the alias (query/directory), then joins
        # through it (make_join, send_join), checking the state and auth chain it answers.
        alias = f"#lobby:{synapse.server_name}"
        r = a.post(f"/_matrix/client/v3/join/{quote(alias, safe='')}", headers=auth(alice_token))
        assert r.status_code == 200, f"{r.text}\n{ours.log_path.read_text()[-3000:]}"
        assert r.json()["room_id"] == room_id
        assert joined_members(a, alice_token, room_id) == {alice, bob}
        assert joined_members(s, bob_token, room_id) == {alice, bob}
        joined = sync_rooms(a, alice_token, "join")
        assert room_id in joined
        entry = joined[room_id]
        assert isinstance(entry, dict)
        names = [e for e in entry["state"]["events"] if e["type"] == "m.room.name"]
        names += [e for e in entry["timeline"]["events"] if e["type"] == "m.room.name"]
        assert names and names[0]["content"] == {"name": "On Synapse"}

        # An unknown alias on Synapse: 404.
        r = a.post(
            f"/_matrix/client/v3/join/{quote(f'#nothing:{synapse.server_name}', safe='')}",
            headers=auth(alice_token),
        )
        assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.text

        # Bob invites alice into an invite-only room: Synapse sends us the invite (v2), and
        # alice's sync shows it with the room's stripped state; she declines it through
        # Synapse (make_leave, send_leave).
        r = s.post(
            "/_matrix/client/v3/createRoom",
            headers=auth(bob_token),
            json={"preset": "private_chat", "name": "Private", "invite": [alice]},
        )
        assert r.status_code == 200, f"{r.text}\n{synapse.log_tail()}"
        private = r.json()["room_id"]
        wait_for(lambda: private in sync_rooms(a, alice_token, "invite"), "the invite")
        invite = sync_rooms(a, alice_token, "invite")[private]
        assert isinstance(invite, dict)
        state = invite["invite_state"]["events"]
        assert any(
            e["type"] == "m.room.name" and e["content"] == {"name": "Private"} for e in state
        )
        r = a.post(
            f"/_matrix/client/v3/rooms/{quote(private, safe='')}/leave", headers=auth(alice_token)
        )
        assert r.status_code == 200, f"{r.text}\n{ours.log_path.read_text()[-3000:]}"
        r = s.get(
            f"/_matrix/client/v3/rooms/{quote(private, safe='')}/state/m.room.member/"
            + quote(alice),
            headers=auth(bob_token),
        )
        assert r.status_code == 200 and r.json()["membership"] == "leave", r.text
        assert private not in sync_rooms(a, alice_token, "invite")

        # Alice knocks on a room of bob's (make_knock, send_knock through Synapse); Synapse
        # shows her knock, and her sync shows the room as its stripped state.
        r = s.post(
            "/_matrix/client/v3/createRoom",
            headers=auth(bob_token),
            json={
                "preset": "private_chat",
                "name": "Knock first",
                "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
            },
        )
        assert r.status_code == 200, r.text
        knock_room = r.json()["room_id"]
        r = a.post(
            f"/_matrix/client/v3/knock/{quote(knock_room, safe='')}",
            params={"via": synapse.server_name},
            headers=auth(alice_token),
            json={"reason": "let me in"},
        )
        assert r.status_code == 200, f"{r.text}\n{ours.log_path.read_text()[-3000:]}"
        r = s.get(
            f"/_matrix/client/v3/rooms/{quote(knock_room, safe='')}/state/m.room.member/"
            + quote(alice),
            headers=auth(bob_token),
        )
        assert r.status_code == 200 and r.json()["membership"] == "knock", r.text
        knocked = sync_rooms(a, alice_token, "knock")
        assert knock_room in knocked, knocked
        entry = knocked[knock_room]
        assert isinstance(entry, dict)
        assert any(
            e["type"] == "m.room.name" and e["content"] == {"name": "Knock first"}
            for e in entry["knock_state"]["events"]
        )

        # She withdraws the knock (the room ID names no server in room version 12: the
        # server comes from the stripped state Synapse answered).
        r = a.post(
            f"/_matrix/client/v3/rooms/{quote(knock_room, safe='')}/leave",
            headers=auth(alice_token),
        )
        assert r.status_code == 200, f"{r.text}\n{ours.log_path.read_text()[-3000:]}"
        r = s.get(
            f"/_matrix/client/v3/rooms/{quote(knock_room, safe='')}/state/m.room.member/"
            + quote(alice),
            headers=auth(bob_token),
        )
        assert r.status_code == 200 and r.json()["membership"] == "leave", r.text

        # Alice invites carol (on Synapse) into a room of ours: Synapse signs the invite and
        # carol sees it.
        r = a.post(
            "/_matrix/client/v3/createRoom",
            headers=auth(alice_token),
            json={"preset": "private_chat", "name": "Ours", "invite": [carol]},
        )
        assert r.status_code == 200, f"{r.text}\n{ours.log_path.read_text()[-3000:]}"
        ours_room = r.json()["room_id"]
        wait_for(lambda: ours_room in sync_rooms(s, carol_token, "invite"), "carol's invite")
        # Carol accepts: Synapse is not in that room, so it joins through us (make_join,
        # send_join on an invite-only room, allowed by her invite).
        r = s.post(
            f"/_matrix/client/v3/rooms/{quote(ours_room, safe='')}/join",
            headers=auth(carol_token),
            json={},
        )
        assert r.status_code == 200, f"{r.text}\n{synapse.log_tail()}"
        assert joined_members(a, alice_token, ours_room) == {alice, carol}
        assert joined_members(s, carol_token, ours_room) == {alice, carol}
