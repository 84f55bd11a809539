"""Guest access: registration as a guest, the endpoints guests may call, joining rooms whose
m.room.guest_access is can_join, and upgrading a guest account."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.api.test_messages import send
from tests.conftest import make_config
from tests.helpers import (
    DEFAULT_PASSWORD,
    auth_header,
    checked,
    create_room,
    login,
    register,
    serve,
)

V3 = "/_matrix/client/v3"
REGISTER = f"{V3}/register"
CAN_JOIN = [{"type": "m.room.guest_access", "content": {"guest_access": "can_join"}}]


@pytest.fixture
async def guests(tmp_path: Path, db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    config = make_config(
        tmp_path, db_url, registration={"enabled": True, "allow_guest_access": True}
    )
    async with serve(config) as (_, client):
        yield client


async def _guest(client: httpx.AsyncClient) -> tuple[str, str]:
    body = checked(await client.post(REGISTER, params={"kind": "guest"}, json={}))
    return str(body["user_id"]), str(body["access_token"])


async def test_guest_registration_is_off_by_default(client: httpx.AsyncClient) -> None:
    r = await client.post(REGISTER, params={"kind": "guest"}, json={})
    assert (r.status_code, r.json()["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
    bad = await client.post(REGISTER, params={"kind": "robot"}, json={})
    assert (bad.status_code, bad.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_a_guest_is_limited_to_the_guest_endpoints(guests: httpx.AsyncClient) -> None:
    client = guests
    guest_id, guest = await _guest(client)
    assert guest_id.split(":")[0][1:].isdigit()
    who = checked(await client.get(f"{V3}/account/whoami", headers=auth_header(guest)))
    assert who == {"user_id": guest_id, "is_guest": True, "device_id": who["device_id"]}
    checked(await client.get(f"{V3}/sync", headers=auth_header(guest)))
    checked(await client.get(f"{V3}/publicRooms", headers=auth_header(guest)))
    # /events is for peeking only: with a room.
    everywhere = await client.get(f"{V3}/events", params={"timeout": 0}, headers=auth_header(guest))
    assert (everywhere.status_code, everywhere.json()["errcode"]) == (
        403,
        "M_GUEST_ACCESS_FORBIDDEN",
    )
    for method, path, body in [
        ("POST", f"{V3}/createRoom", {}),
        ("GET", f"{V3}/joined_rooms", None),
        ("PUT", f"{V3}/user/{quote(guest_id)}/account_data/x.y", {}),
        ("POST", f"{V3}/account/password", {"new_password": "x" * 12}),
    ]:
        r = await client.request(method, path, headers=auth_header(guest), json=body)
        assert (r.status_code, r.json()["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN"), path
    # A guest body that is no object, or a device name that is no string: 400.
    r = await client.post(REGISTER, params={"kind": "guest"}, content=b"[]")
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await client.post(
        REGISTER, params={"kind": "guest"}, json={"initial_device_display_name": 5}
    )
    assert r.status_code == 400


async def test_guests_join_only_rooms_that_let_them(guests: httpx.AsyncClient) -> None:
    client = guests
    _, alice = await register(client, "alice")
    _, guest = await _guest(client)
    open_room = await create_room(client, alice, preset="public_chat", initial_state=CAN_JOIN)
    closed_room = await create_room(client, alice, preset="public_chat")
    refused = await client.post(f"{V3}/join/{quote(closed_room)}", headers=auth_header(guest))
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
    checked(await client.post(f"{V3}/join/{quote(open_room)}", headers=auth_header(guest), json={}))
    said = await send(client, guest, open_room, "hello from a guest")
    messages = checked(
        await client.get(
            f"{V3}/rooms/{quote(open_room)}/messages",
            params={"dir": "b"},
            headers=auth_header(guest),
        )
    )
    assert said in [e["event_id"] for e in messages["chunk"]]
    # Only m.room.message: other event types are not for guests.
    other = await client.put(
        f"{V3}/rooms/{quote(open_room)}/send/m.reaction/t1", headers=auth_header(guest), json={}
    )
    assert (other.status_code, other.json()["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
    checked(
        await client.post(
            f"{V3}/rooms/{quote(open_room)}/leave", headers=auth_header(guest), json={}
        )
    )


async def test_upgrading_a_guest_keeps_its_user_id(guests: httpx.AsyncClient) -> None:
    client = guests
    guest_id, guest = await _guest(client)
    body = {
        "password": DEFAULT_PASSWORD,
        "guest_access_token": guest,
        "auth": {"type": "m.login.dummy"},
    }
    upgraded = checked(await client.post(REGISTER, json=body))
    assert upgraded["user_id"] == guest_id
    # The old token is now a full user's: createRoom works, whoami says so.
    who = checked(await client.get(f"{V3}/account/whoami", headers=auth_header(guest)))
    assert who["is_guest"] is False
    await create_room(client, guest)
    await create_room(client, upgraded["access_token"])
    assert (await login(client, guest_id))["user_id"] == guest_id
    # A second upgrade of the same account: it is no guest any more.
    again = await client.post(REGISTER, json=body)
    assert (again.status_code, again.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_upgrade_bad_inputs(guests: httpx.AsyncClient) -> None:
    client = guests
    _, user = await register(client, "alice")
    _, guest = await _guest(client)
    dummy = {"type": "m.login.dummy"}
    cases = [
        (
            {"password": DEFAULT_PASSWORD, "guest_access_token": "nope", "auth": dummy},
            401,
            "M_UNKNOWN_TOKEN",
        ),
        (
            {"password": DEFAULT_PASSWORD, "guest_access_token": user, "auth": dummy},
            403,
            "M_FORBIDDEN",
        ),
        (
            {
                "username": "someone",
                "password": DEFAULT_PASSWORD,
                "guest_access_token": guest,
                "auth": dummy,
            },
            400,
            "M_INVALID_PARAM",
        ),
        ({"password": DEFAULT_PASSWORD, "guest_access_token": 5, "auth": dummy}, 400, "M_BAD_JSON"),
    ]
    for body, status, errcode in cases:
        r = await client.post(REGISTER, json=body)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), (body, r.text)


async def test_a_guest_peeks_into_a_world_readable_room(guests: httpx.AsyncClient) -> None:
    client = guests
    _, alice = await register(client, "alice")
    _, guest = await _guest(client)
    readable = [
        {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
    ]
    room = await create_room(client, alice, initial_state=readable)
    said = await send(client, alice, room, "visible to all")
    peek = await client.get(f"{V3}/rooms/{quote(room)}/initialSync", headers=auth_header(guest))
    assert said in [e["event_id"] for e in checked(peek)["messages"]["chunk"]]
    events = await client.get(
        f"{V3}/events", params={"room_id": room, "timeout": 0}, headers=auth_header(guest)
    )
    assert checked(events)["chunk"] == []


async def test_guests_leave_when_guest_access_is_revoked(guests: httpx.AsyncClient) -> None:
    client = guests
    alice_id, alice = await register(client, "alice")
    bob_id, bob = await register(client, "bob")
    guest_id, guest = await _guest(client)
    other_guest_id, other_guest = await _guest(client)
    room = await create_room(client, alice, preset="public_chat", initial_state=CAN_JOIN)
    for token in (bob, guest, other_guest):
        checked(await client.post(f"{V3}/join/{quote(room)}", headers=auth_header(token), json={}))
    state = f"{V3}/rooms/{quote(room)}/state"
    # The same content again changes nothing: nobody leaves.
    checked(
        await client.put(
            f"{state}/m.room.guest_access/", headers=auth_header(alice), json=CAN_JOIN[0]["content"]
        )
    )
    members = f"{V3}/rooms/{quote(room)}/joined_members"
    joined = checked(await client.get(members, headers=auth_header(alice)))["joined"]
    assert set(joined) == {alice_id, bob_id, guest_id, other_guest_id}
    checked(
        await client.put(
            f"{state}/m.room.guest_access/",
            headers=auth_header(alice),
            json={"guest_access": "forbidden"},
        )
    )
    joined = checked(await client.get(members, headers=auth_header(alice)))["joined"]
    assert set(joined) == {alice_id, bob_id}
    for gone in (guest_id, other_guest_id):
        member = checked(
            await client.get(f"{state}/m.room.member/{quote(gone)}", headers=auth_header(alice))
        )
        assert member["membership"] == "leave"
    # Each guest left on its own (a leave by the guest, not a kick by alice).
    messages = checked(
        await client.get(
            f"{V3}/rooms/{quote(room)}/messages",
            params={"dir": "b", "limit": 10},
            headers=auth_header(alice),
        )
    )
    leaves = [
        e
        for e in messages["chunk"]
        if e["type"] == "m.room.member" and e["content"]["membership"] == "leave"
    ]
    assert sorted(e["sender"] for e in leaves) == sorted([guest_id, other_guest_id])
    # They cannot come back while guest access is forbidden.
    refused = await client.post(f"{V3}/join/{quote(room)}", headers=auth_header(guest))
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
    # Any value but can_join (here not even a string) counts as forbidden.
    checked(
        await client.put(
            f"{state}/m.room.guest_access/", headers=auth_header(alice), json=CAN_JOIN[0]["content"]
        )
    )
    checked(await client.post(f"{V3}/join/{quote(room)}", headers=auth_header(guest), json={}))
    checked(
        await client.put(
            f"{state}/m.room.guest_access/", headers=auth_header(alice), json={"guest_access": 7}
        )
    )
    joined = checked(await client.get(members, headers=auth_header(alice)))["joined"]
    assert set(joined) == {alice_id, bob_id}
