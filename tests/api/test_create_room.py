"""POST /createRoom: presets, initial state, aliases, invites, room versions, bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import auth_header, register
from tests.openapi_schema import assert_response_matches

V3 = "/_matrix/client/v3"


async def create(client: httpx.AsyncClient, token: str, **body: Any) -> str:
    r = await client.post(f"{V3}/createRoom", headers=auth_header(token), json=body)
    assert r.status_code == 200, r.text
    assert_response_matches("POST", r.request.url.raw_path.decode(), 200, r.json())
    return str(r.json()["room_id"])


async def state(
    client: httpx.AsyncClient, token: str, room_id: str
) -> dict[tuple[str, str], dict[str, Any]]:
    r = await client.get(f"{V3}/rooms/{room_id}/state", headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert_response_matches("GET", r.request.url.raw_path.decode(), 200, r.json())
    return {(e["type"], e["state_key"]): e for e in r.json()}


async def create_error(client: httpx.AsyncClient, token: str, body: Any) -> httpx.Response:
    r = await client.post(f"{V3}/createRoom", headers=auth_header(token), json=body)
    assert r.status_code >= 400, r.text
    assert_response_matches("POST", r.request.url.raw_path.decode(), r.status_code, r.json())
    return r


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_presets(client: httpx.AsyncClient, version: str) -> None:
    alice, tok = await register(client, "alice")
    bob, _ = await register(client, "bob")
    expected = {
        "private_chat": ("invite", "shared", "can_join", 0),
        "public_chat": ("public", "shared", "forbidden", 50),
        "trusted_private_chat": ("invite", "shared", "can_join", 0),
    }
    for preset, (join_rule, history, guests, invite_level) in expected.items():
        room_id = await create(client, tok, preset=preset, room_version=version, invite=[bob])
        s = await state(client, tok, room_id)
        assert s[("m.room.join_rules", "")]["content"] == {"join_rule": join_rule}
        assert s[("m.room.history_visibility", "")]["content"] == {"history_visibility": history}
        assert s[("m.room.guest_access", "")]["content"] == {"guest_access": guests}
        create_event = s[("m.room.create", "")]
        assert create_event["content"]["room_version"] == version
        assert create_event["sender"] == alice
        pl = s[("m.room.power_levels", "")]["content"]
        assert pl["invite"] == invite_level
        assert pl["users_default"] == 0 and pl["events_default"] == 0
        assert pl["state_default"] == 50
        assert s[("m.room.member", alice)]["content"]["membership"] == "join"
        assert s[("m.room.member", bob)]["content"]["membership"] == "invite"
        trusted = preset == "trusted_private_chat"
        if version == "12":
            # v12: creators have infinite power and may not be listed in `users`; the
            # trusted invitees are made creators too.
            assert alice not in pl["users"]
            assert bob not in pl["users"]
            assert create_event["content"].get("additional_creators", []) == (
                [bob] if trusted else []
            )
            assert "creator" not in create_event["content"]
        else:
            assert pl["users"].get(alice) == 100
            assert pl["users"].get(bob) == (100 if trusted else None)
            assert "additional_creators" not in create_event["content"]
            if version == "10":
                assert create_event["content"]["creator"] == alice
            else:
                assert "creator" not in create_event["content"]
        if version == "12":
            # v12: the room ID is the create event's reference hash, with no server name.
            assert room_id.startswith("!") and ":" not in room_id
        else:
            assert room_id.startswith("!") and room_id.endswith(":test")
        # The room works: a message goes in and comes back.
        r = await client.put(
            f"{V3}/rooms/{room_id}/send/m.room.message/{preset}",
            headers=auth_header(tok),
            json={"msgtype": "m.text", "body": "hi"},
        )
        assert r.status_code == 200, r.text
        r = await client.get(
            f"{V3}/rooms/{room_id}/event/{r.json()['event_id']}", headers=auth_header(tok)
        )
        assert r.status_code == 200, r.text
        assert (r.json()["content"]["body"], r.json()["room_id"]) == ("hi", room_id)


async def test_defaults(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    public = await create(client, tok, visibility="public")
    private = await create(client, tok)
    # The creator is joined, alone, to rooms of the default version.
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(tok))
    assert sorted(r.json()["joined_rooms"]) == sorted([public, private])
    r = await client.get(f"{V3}/rooms/{private}/joined_members", headers=auth_header(tok))
    assert list(r.json()["joined"]) == [alice]
    r = await client.get(f"{V3}/capabilities", headers=auth_header(tok))
    assert r.status_code == 200, r.text
    default_version = r.json()["capabilities"]["m.room_versions"]["default"]
    # visibility picks the preset when none is given.
    s = await state(client, tok, public)
    assert s[("m.room.join_rules", "")]["content"]["join_rule"] == "public"
    s = await state(client, tok, private)
    assert s[("m.room.join_rules", "")]["content"]["join_rule"] == "invite"
    assert s[("m.room.create", "")]["content"]["room_version"] == default_version
    r = await client.get(f"{V3}/directory/list/room/{public}")
    assert r.json() == {"visibility": "public"}
    r = await client.get(f"{V3}/directory/list/room/{private}")
    assert r.json() == {"visibility": "private"}


async def test_unsupported_room_version(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    for version in ("13", "0", "01", "x", "org.example.x", "1.0", ""):
        r = await create_error(client, tok, {"room_version": version})
        assert r.status_code == 400
        assert r.json()["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(tok))
    assert r.json() == {"joined_rooms": []}


async def test_name_topic_and_alias(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    room_id = await create(
        client, tok, name="Tea", topic="Earl Grey", room_alias_name="tea", preset="public_chat"
    )
    s = await state(client, tok, room_id)
    assert s[("m.room.name", "")]["content"] == {"name": "Tea"}
    assert s[("m.room.topic", "")]["content"]["topic"] == "Earl Grey"
    assert s[("m.room.canonical_alias", "")]["content"] == {"alias": "#tea:test"}
    r = await client.get(f"{V3}/directory/room/%23tea:test")
    assert r.status_code == 200, r.text
    assert r.json() == {"room_id": room_id, "servers": ["test"]}
    # The same alias again is taken, whoever asks, and no room is made.
    r = await create_error(client, b_tok, {"room_alias_name": "tea"})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_ROOM_IN_USE")
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(b_tok))
    assert r.json() == {"joined_rooms": []}


async def test_bad_alias_name(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    for name in ("a:b", "a b", "", "#x", "x" * 300):
        r = await create_error(client, tok, {"room_alias_name": name})
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), name


async def test_invite_and_is_direct(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    room_id = await create(client, tok, invite=[bob], is_direct=True, preset="trusted_private_chat")
    r = await client.get(f"{V3}/sync", headers=auth_header(b_tok))
    assert r.status_code == 200, r.text
    invite_state = r.json()["rooms"]["invite"][room_id]["invite_state"]["events"]
    member = [e for e in invite_state if e["type"] == "m.room.member" and e["state_key"] == bob][0]
    assert member["content"]["membership"] == "invite"
    assert member["content"]["is_direct"] is True
    assert member["sender"] == alice
    # Not direct: the invite carries no is_direct.
    other = await create(client, tok, invite=[carol])
    s = await state(client, tok, other)
    assert "is_direct" not in s[("m.room.member", carol)]["content"]
    r = await client.post(f"{V3}/rooms/{other}/join", headers=auth_header(c_tok), json={})
    assert r.status_code == 200, r.text


async def test_invite_unknown_or_remote_user(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    r = await create_error(client, tok, {"invite": ["@nobody:test"]})
    assert r.status_code in (400, 403, 404)
    r = await create_error(client, tok, {"invite": ["not-a-user-id"]})
    assert r.status_code == 400
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(tok))
    assert r.json() == {"joined_rooms": []}


async def test_initial_state(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    room_id = await create(
        client,
        tok,
        preset="private_chat",
        initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}},
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            },
            {"type": "org.example.custom", "state_key": "k", "content": {"x": 1}},
        ],
    )
    s = await state(client, tok, room_id)
    # initial_state overrides the preset's event of the same type.
    assert s[("m.room.history_visibility", "")]["content"] == {"history_visibility": "joined"}
    assert s[("m.room.encryption", "")]["content"] == {"algorithm": "m.megolm.v1.aes-sha2"}
    assert s[("org.example.custom", "k")]["content"] == {"x": 1}
    assert s[("m.room.join_rules", "")]["content"] == {"join_rule": "invite"}
    # `name` and `topic` win over initial_state.
    room_id = await create(
        client,
        tok,
        name="Explicit",
        initial_state=[{"type": "m.room.name", "content": {"name": "From state"}}],
    )
    s = await state(client, tok, room_id)
    assert s[("m.room.name", "")]["content"] == {"name": "Explicit"}


async def test_power_level_content_override(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    bob, _ = await register(client, "bob")
    room_id = await create(
        client,
        tok,
        room_version="11",
        invite=[bob],
        power_level_content_override={"events_default": 20, "users": {alice: 100, bob: 30}},
    )
    s = await state(client, tok, room_id)
    pl = s[("m.room.power_levels", "")]["content"]
    assert pl["events_default"] == 20
    assert pl["users"] == {alice: 100, bob: 30}
    assert pl["ban"] == 50  # untouched keys keep the preset's values


async def test_creation_content(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    room_id = await create(
        client,
        tok,
        room_version="11",
        creation_content={"m.federate": False, "type": "m.space", "creator": "@mallory:test"},
    )
    s = await state(client, tok, room_id)
    content = s[("m.room.create", "")]["content"]
    assert content["m.federate"] is False
    assert content["type"] == "m.space"
    assert content["room_version"] == "11"
    assert "creator" not in content  # v11: the sender is the creator
    room_id = await create(
        client, tok, room_version="10", creation_content={"creator": "@mallory:test"}
    )
    s = await state(client, tok, room_id)
    assert s[("m.room.create", "")]["content"]["creator"] == alice


BAD_BODIES: list[dict[str, Any]] = [
    {"name": 5},
    {"topic": ["x"]},
    {"invite": "@bob:test"},
    {"invite": [5]},
    {"is_direct": "true"},
    {"preset": "secret_chat"},
    {"visibility": "hidden"},
    {"room_version": 11},
    {"initial_state": {"type": "m.room.name"}},
    {"initial_state": [{"type": "m.room.name"}]},
    {"initial_state": [{"content": {}}]},
    {"initial_state": [{"type": "x", "state_key": 1, "content": {}}]},
    {"creation_content": []},
    {"power_level_content_override": "x"},
    {"room_alias_name": 1},
    {"name": "x", "creation_content": {"n": 1.5}},
]


async def test_bad_types(client: httpx.AsyncClient) -> None:
    _, tok = await register(client, "alice")
    for body in BAD_BODIES:
        r = await create_error(client, tok, body)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), (body, r.text)
    r = await client.post(f"{V3}/createRoom", headers=auth_header(tok), content=b"{")
    assert (r.status_code, r.json()["errcode"]) == (400, "M_NOT_JSON")
    r = await client.post(f"{V3}/createRoom", headers=auth_header(tok), json=[])
    assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await client.post(f"{V3}/createRoom", json={})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await client.post(f"{V3}/createRoom", json={}, headers=auth_header("nope"))
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(tok))
    assert r.json() == {"joined_rooms": []}


async def test_invalid_room_state_makes_no_room(client: httpx.AsyncClient) -> None:
    alice, tok = await register(client, "alice")
    bob, _ = await register(client, "bob")
    bodies: list[dict[str, Any]] = [
        # Power levels the auth rules refuse.
        {"room_version": "11", "power_level_content_override": {"events_default": "0"}},
        {"room_version": "11", "power_level_content_override": {"users": {alice: "100"}}},
        {"room_version": "12", "power_level_content_override": {"users": {alice: 100}}},
        # The creator demoted below what setting up the room needs (the join rules: 50).
        {"room_version": "11", "power_level_content_override": {"users": {alice: 10}}},
        {
            "room_version": "11",
            "name": "x",
            "power_level_content_override": {"events": {"m.room.name": 101}},
        },
        # State keys that are other users' IDs belong to them.
        {"initial_state": [{"type": "org.example", "state_key": bob, "content": {}}]},
        # Inviting oneself: already joined.
        {"invite": [alice]},
    ]
    for body in bodies:
        r = await create_error(client, tok, body)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_ROOM_STATE"), (body, r.text)
    # Too large: a state key over 255 bytes.
    r = await client.post(
        f"{V3}/createRoom",
        headers=auth_header(tok),
        json={"initial_state": [{"type": "org.example", "state_key": "k" * 256, "content": {}}]},
    )
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE"), r.text
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(tok))
    assert r.json() == {"joined_rooms": []}
    r = await client.get(f"{V3}/sync", headers=auth_header(tok))
    assert "rooms" not in r.json()
    # The creator may lower themselves as long as the setup still passes.
    room_id = await create(
        client,
        tok,
        room_version="11",
        power_level_content_override={"users": {alice: 50}, "events": {}},
    )
    s = await state(client, tok, room_id)
    assert s[("m.room.power_levels", "")]["content"]["users"] == {alice: 50}
    assert s[("m.room.history_visibility", "")]["sender"] == alice
