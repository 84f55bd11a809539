"""Rooms of versions 1 and 2, and spaces, with Synapse (the pinned release, in its own
virtualenv) on loopback over TLS: a Synapse user joins our version 1 room and our user joins
Synapse's version 2 room (event IDs named by their servers, [id, {sha256}] references),
messages going both ways in each; each server's /hierarchy lists a room of the other's
that it is not in, asked over federation /hierarchy. One test: Synapse is slow to start."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_synapse_interop import (
    auth,
    client,
    joined_members,
    ours_and_synapse,
    register,
)
from tests.synapse_helpers import SynapseProcess

__all__ = ["ours_and_synapse"]  # the fixture, shared with the other Synapse tests

V3 = "/_matrix/client/v3"


def create(c: httpx.Client, token: str, **body: Any) -> str:
    r = c.post(f"{V3}/createRoom", headers=auth(token), json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["room_id"])


def send(c: httpx.Client, token: str, room_id: str, txn: str, body: str) -> str:
    r = c.put(
        f"{V3}/rooms/{quote(room_id, safe='')}/send/m.room.message/{txn}",
        headers=auth(token),
        json={"msgtype": "m.text", "body": body},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


def bodies(c: httpx.Client, token: str, room_id: str) -> list[str]:
    r = c.get(
        f"{V3}/rooms/{quote(room_id, safe='')}/messages",
        params={"dir": "b", "limit": 30},
        headers=auth(token),
    )
    assert r.status_code == 200, r.text
    return [e["content"].get("body") for e in r.json()["chunk"] if e["type"] == "m.room.message"]


def wait_for_body(c: httpx.Client, token: str, room_id: str, body: str, where: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if body in bodies(c, token, room_id):
            return
        time.sleep(0.3)
    raise AssertionError(f"{body!r} never reached {where}")


def join(c: httpx.Client, token: str, room_id: str, server: str) -> httpx.Response:
    return c.post(
        f"{V3}/join/{quote(room_id, safe='')}",
        params={"server_name": server},
        headers=auth(token),
        json={},
    )


def hierarchy(c: httpx.Client, token: str, room_id: str) -> dict[str, dict[str, Any]]:
    r = c.get(f"/_matrix/client/v1/rooms/{quote(room_id, safe='')}/hierarchy", headers=auth(token))
    assert r.status_code == 200, r.text
    return {room["room_id"]: room for room in r.json()["rooms"]}


def space_with(c: httpx.Client, token: str, name: str, child: str, via: str) -> str:
    return create(
        c,
        token,
        preset="public_chat",
        name=name,
        creation_content={"type": "m.space"},
        initial_state=[{"type": "m.space.child", "state_key": child, "content": {"via": [via]}}],
    )


def test_old_room_versions_and_spaces_with_synapse(
    ours_and_synapse: tuple[ServerProcess, SynapseProcess],
) -> None:
    ours, synapse = ours_and_synapse
    our_name = f"localhost:{ours.port}"
    with client(ours.base_url, ours.verify) as a, client(synapse.base_url, synapse.verify) as s:
        alice, alice_token = register(a, "alice")
        bob, bob_token = register(s, "bob")

        def logs() -> str:
            return f"{synapse.log_tail()}\n{ours.log_path.read_text()[-3000:]}"

        # Our room of version 1: Synapse joins it through us (make_join with ver, send_join
        # of an event it names on its own server).
        ours_v1 = create(a, alice_token, preset="public_chat", name="Old here", room_version="1")
        send(a, alice_token, ours_v1, "before", "before bob")
        r = join(s, bob_token, ours_v1, our_name)
        assert r.status_code == 200, f"{r.text}\n{logs()}"
        assert joined_members(a, alice_token, ours_v1) == {alice, bob}
        assert joined_members(s, bob_token, ours_v1) == {alice, bob}
        send(a, alice_token, ours_v1, "a1", "hello bob, in version 1")
        wait_for_body(s, bob_token, ours_v1, "hello bob, in version 1", "Synapse")
        send(s, bob_token, ours_v1, "b1", "hello alice, in version 1")
        wait_for_body(a, alice_token, ours_v1, "hello alice, in version 1", "us")

        # Synapse's room of version 2: our user joins through it.
        theirs_v2 = create(s, bob_token, preset="public_chat", name="Old there", room_version="2")
        send(s, bob_token, theirs_v2, "before", "before alice")
        r = join(a, alice_token, theirs_v2, synapse.server_name)
        assert r.status_code == 200, f"{r.text}\n{logs()}"
        assert joined_members(a, alice_token, theirs_v2) == {alice, bob}
        assert joined_members(s, bob_token, theirs_v2) == {alice, bob}
        send(a, alice_token, theirs_v2, "a2", "hello bob, in version 2")
        wait_for_body(s, bob_token, theirs_v2, "hello bob, in version 2", "Synapse")
        send(s, bob_token, theirs_v2, "b2", "hello alice, in version 2")
        wait_for_body(a, alice_token, theirs_v2, "hello alice, in version 2", "us")

        # A space on Synapse whose child room we are not in: our /hierarchy asks Synapse.
        their_child = create(s, bob_token, preset="public_chat", name="Synapse child")
        their_space = space_with(s, bob_token, "Synapse space", their_child, synapse.server_name)
        r = join(a, alice_token, their_space, synapse.server_name)
        assert r.status_code == 200, f"{r.text}\n{logs()}"
        listed = hierarchy(a, alice_token, their_space)
        assert set(listed) == {their_space, their_child}, f"{listed}\n{logs()}"
        assert listed[their_child]["name"] == "Synapse child"
        assert listed[their_space]["children_state"][0]["state_key"] == their_child

        # And ours, for Synapse: it asks our federation /hierarchy for our child room.
        our_child = create(a, alice_token, preset="public_chat", name="Our child")
        our_space = space_with(a, alice_token, "Our space", our_child, our_name)
        r = join(s, bob_token, our_space, our_name)
        assert r.status_code == 200, f"{r.text}\n{logs()}"
        listed = hierarchy(s, bob_token, our_space)
        assert set(listed) == {our_space, our_child}, f"{listed}\n{logs()}"
        assert listed[our_child]["name"] == "Our child"
