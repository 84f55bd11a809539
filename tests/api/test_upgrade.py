"""POST /rooms/{roomId}/upgrade: the replacement room, copied state, tombstone, old room."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

V3 = "/_matrix/client/v3"


def checked(r: httpx.Response, status: int = 200, errcode: str | None = None) -> Any:
    assert r.status_code == status, r.text
    body = r.json()
    if errcode is not None:
        assert body["errcode"] == errcode, r.text
    assert_response_matches(r.request.method, r.request.url.raw_path.decode(), status, body)
    return body


def alias_url(alias: str) -> str:
    return f"{V3}/directory/room/{alias.replace('#', '%23')}"


async def create(client: httpx.AsyncClient, token: str, **body: Any) -> str:
    r = await client.post(f"{V3}/createRoom", json=body, headers=auth_header(token))
    return str(checked(r)["room_id"])


async def state(
    client: httpx.AsyncClient, token: str, room_id: str, event_type: str, state_key: str = ""
) -> dict[str, Any]:
    r = await client.get(
        f"{V3}/rooms/{room_id}/state/{event_type}/{state_key}", headers=auth_header(token)
    )
    body: dict[str, Any] = checked(r)
    return body


async def upgrade(client: httpx.AsyncClient, token: str, room_id: str, body: Any) -> httpx.Response:
    return await client.post(f"{V3}/rooms/{room_id}/upgrade", json=body, headers=auth_header(token))


@pytest.mark.parametrize("old_version", ["10", "11"])
async def test_upgrade_to_v12_copies_state_and_retires_the_old_room(
    client: httpx.AsyncClient, old_version: str
) -> None:
    alice, atok = await register(client, "alice")
    bob, btok = await register(client, "bob")
    old = await create(
        client,
        atok,
        preset="public_chat",
        room_version=old_version,
        visibility="public",
        name="Kitchen",
        topic="tea",
        room_alias_name="kitchen",
        power_level_content_override={"users": {alice: 100, bob: 50}},
    )
    r = await client.post(f"{V3}/join/{old}", json={}, headers=auth_header(btok))
    checked(r)
    r = await client.put(
        f"{V3}/rooms/{old}/state/m.room.history_visibility/",
        json={"history_visibility": "world_readable"},
        headers=auth_header(atok),
    )
    checked(r)
    r = await client.get(
        f"{V3}/rooms/{old}/messages", params={"limit": "1"}, headers=auth_header(atok)
    )
    last_event = checked(r)["chunk"][0]["event_id"]

    new = checked(await upgrade(client, atok, old, {"new_version": "12"}))["replacement_room"]
    assert new != old

    create_content = await state(client, atok, new, "m.room.create")
    assert create_content["room_version"] == "12"
    assert create_content["predecessor"] == {"room_id": old, "event_id": last_event}
    assert "creator" not in create_content
    assert (await state(client, atok, new, "m.room.name"))["name"] == "Kitchen"
    assert (await state(client, atok, new, "m.room.topic"))["topic"] == "tea"
    assert (await state(client, atok, new, "m.room.join_rules"))["join_rule"] == "public"
    assert (await state(client, atok, new, "m.room.history_visibility"))[
        "history_visibility"
    ] == "world_readable"
    assert (await state(client, atok, new, "m.room.guest_access"))["guest_access"] == "forbidden"
    pl = await state(client, atok, new, "m.room.power_levels")
    # v12: the creator has infinite power and may not be listed; others keep their levels.
    assert pl["users"] == {bob: 50}
    assert (await state(client, atok, new, "m.room.canonical_alias"))["alias"] == "#kitchen:test"
    r = await client.get(alias_url("#kitchen:test"))
    assert checked(r)["room_id"] == new
    r = await client.get(f"{V3}/directory/list/room/{new}")
    assert checked(r)["visibility"] == "public"
    r = await client.get(f"{V3}/directory/list/room/{old}")
    assert checked(r)["visibility"] == "private"
    r = await client.get(f"{V3}/rooms/{new}/joined_members", headers=auth_header(atok))
    assert list(checked(r)["joined"]) == [alice]

    tombstone = await state(client, btok, old, "m.room.tombstone")
    assert tombstone["replacement_room"] == new
    assert isinstance(tombstone["body"], str)
    old_pl = await state(client, btok, old, "m.room.power_levels")
    assert old_pl["events_default"] == 50 and old_pl["invite"] == 50
    assert await state(client, atok, old, "m.room.canonical_alias") == {}
    # Bob (50) can still speak in the old room; a newcomer at 0 could not.
    r = await client.put(
        f"{V3}/rooms/{old}/send/m.room.message/t1",
        json={"msgtype": "m.text", "body": "hi"},
        headers=auth_header(btok),
    )
    checked(r)
    # Bob follows the tombstone.
    r = await client.post(f"{V3}/join/{new}", json={}, headers=auth_header(btok))
    checked(r)


async def test_upgrade_from_v12_with_additional_creators(client: httpx.AsyncClient) -> None:
    alice, atok = await register(client, "alice")
    bob, btok = await register(client, "bob")
    carol, _ = await register(client, "carol")
    old = await create(
        client,
        atok,
        preset="private_chat",
        room_version="12",
        invite=[bob],
        power_level_content_override={"users": {bob: 100}},
    )
    r = await client.post(f"{V3}/join/{old}", json={}, headers=auth_header(btok))
    checked(r)
    # Bob has 100, not infinite: in v12 only creators may send the tombstone (150).
    checked(await upgrade(client, btok, old, {"new_version": "12"}), 403, "M_FORBIDDEN")

    body = {"new_version": "12", "additional_creators": [carol]}
    new = checked(await upgrade(client, atok, old, body))["replacement_room"]
    create_content = await state(client, atok, new, "m.room.create")
    assert create_content["additional_creators"] == [carol]
    assert create_content["predecessor"]["room_id"] == old
    pl = await state(client, atok, new, "m.room.power_levels")
    assert pl["users"] == {bob: 100}
    assert pl["events"]["m.room.tombstone"] == 150


async def test_upgrade_to_an_older_version_lists_the_creator(client: httpx.AsyncClient) -> None:
    alice, atok = await register(client, "alice")
    old = await create(client, atok, room_version="12")
    new = checked(await upgrade(client, atok, old, {"new_version": "10"}))["replacement_room"]
    create_content = await state(client, atok, new, "m.room.create")
    assert create_content["creator"] == alice and create_content["room_version"] == "10"
    pl = await state(client, atok, new, "m.room.power_levels")
    # The v12 creator had no entry; without infinite power in v10 they need one: the highest
    # level the power levels name (the v12 tombstone's 150), so that they can still upgrade.
    assert pl["users"] == {alice: 150}
    assert pl["events"]["m.room.tombstone"] == 150
    r = await client.put(
        f"{V3}/rooms/{new}/state/m.room.name/", json={"name": "again"}, headers=auth_header(atok)
    )
    checked(r)
    checked(await upgrade(client, atok, new, {"new_version": "1"}))


async def test_moderator_with_tombstone_power_upgrades(client: httpx.AsyncClient) -> None:
    alice, atok = await register(client, "alice")
    bob, btok = await register(client, "bob")
    old = await create(
        client,
        atok,
        preset="public_chat",
        room_version="11",
        power_level_content_override={
            "users": {alice: 100, bob: 60},
            "events": {
                "m.room.tombstone": 60,
                "m.room.server_acl": 100,
                "m.room.power_levels": 100,
            },
        },
    )
    r = await client.post(f"{V3}/join/{old}", json={}, headers=auth_header(btok))
    checked(r)
    r = await client.put(
        f"{V3}/rooms/{old}/state/m.room.server_acl/",
        json={"allow": ["*"], "deny": ["evil.example"], "allow_ip_literals": False},
        headers=auth_header(atok),
    )
    checked(r)
    new = checked(await upgrade(client, btok, old, {"new_version": "11"}))["replacement_room"]
    # Bob sent the server ACL (level 100) for a moment, then went back to 60.
    acl = await state(client, btok, new, "m.room.server_acl")
    assert acl["deny"] == ["evil.example"]
    pl = await state(client, btok, new, "m.room.power_levels")
    assert pl["users"] == {alice: 100, bob: 60}
    assert (await state(client, btok, old, "m.room.tombstone"))["replacement_room"] == new
    # Bob could not restrict the old room's power levels (100): the upgrade stands anyway.
    assert (await state(client, btok, old, "m.room.power_levels"))["events_default"] == 0


async def test_upgrade_errors(client: httpx.AsyncClient) -> None:
    _, atok = await register(client, "alice")
    _, btok = await register(client, "bob")
    _, ctok = await register(client, "carol")
    room = await create(client, atok, preset="public_chat", room_version="11")
    r = await client.post(f"{V3}/join/{room}", json={}, headers=auth_header(btok))
    checked(r)
    checked(
        await upgrade(client, atok, room, {"new_version": "13"}), 400, "M_UNSUPPORTED_ROOM_VERSION"
    )
    checked(
        await upgrade(client, atok, room, {"new_version": "bogus"}),
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    )
    checked(await upgrade(client, btok, room, {"new_version": "12"}), 403, "M_FORBIDDEN")
    checked(await upgrade(client, ctok, room, {"new_version": "12"}), 403, "M_FORBIDDEN")
    checked(await upgrade(client, atok, "!unknown:test", {"new_version": "12"}), 403, "M_FORBIDDEN")
    checked(await upgrade(client, atok, room, {}), 400, "M_MISSING_PARAM")
    checked(await upgrade(client, atok, room, {"new_version": 12}), 400, "M_BAD_JSON")
    checked(await upgrade(client, atok, room, ["12"]), 400, "M_BAD_JSON")
    checked(
        await upgrade(client, atok, room, {"new_version": "12", "additional_creators": ["nobody"]}),
        400,
        "M_INVALID_PARAM",
    )
    r = await client.post(
        f"{V3}/rooms/{room}/upgrade", content=b"{not json", headers=auth_header(atok)
    )
    checked(r, 400, "M_NOT_JSON")
    # Nothing happened to the room through all of that.
    r = await client.get(f"{V3}/rooms/{room}/state/m.room.tombstone/", headers=auth_header(atok))
    assert r.status_code == 404
