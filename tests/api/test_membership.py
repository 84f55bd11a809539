"""Joining, inviting, leaving, kicking, banning, forgetting; joined_rooms, members."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import auth_header, checked, register
from tests.helpers import create_room as create

V3 = "/_matrix/client/v3"


async def post(
    client: httpx.AsyncClient, token: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await client.post(
        f"{V3}{path}", headers=auth_header(token), json={} if body is None else body
    )


async def membership_of(
    client: httpx.AsyncClient, token: str, room_id: str, user_id: str
) -> dict[str, Any]:
    r = await client.get(
        f"{V3}/rooms/{room_id}/state/m.room.member/{user_id}",
        headers=auth_header(token),
        params={"format": "event"},
    )
    # Not validated: the spec's `oneOf: [object, state event]` matches a full event twice.
    event: dict[str, Any] = checked(r, documented=False)
    return event


async def test_join_by_id_and_by_alias(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    room_id = await create(client, a_tok, preset="public_chat", room_alias_name="hall")
    body = checked(await post(client, b_tok, f"/rooms/{room_id}/join", {"reason": "hi"}))
    assert body == {"room_id": room_id}
    event = await membership_of(client, a_tok, room_id, bob)
    assert event["content"]["membership"] == "join"
    assert event["content"]["reason"] == "hi"
    assert event["content"]["displayname"] == "bob"
    assert event["sender"] == bob
    body = checked(await post(client, c_tok, "/join/%23hall:test"))
    assert body == {"room_id": room_id}
    body = checked(await post(client, c_tok, f"/join/{room_id}"))  # again: still joined
    assert body == {"room_id": room_id}
    r = await client.get(f"{V3}/rooms/{room_id}/joined_members", headers=auth_header(b_tok))
    assert set(checked(r)["joined"]) == {alice, bob, carol}


async def test_join_errors(client: httpx.AsyncClient) -> None:
    _, a_tok = await register(client, "alice")
    _, b_tok = await register(client, "bob")
    private = await create(client, a_tok, preset="private_chat")
    checked(await post(client, b_tok, f"/rooms/{private}/join"), 403, "M_FORBIDDEN")
    checked(await post(client, b_tok, f"/join/{private}"), 403, "M_FORBIDDEN")
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(b_tok))
    assert checked(r) == {"joined_rooms": []}
    # Unknown alias and unknown room.
    checked(
        await post(client, b_tok, "/join/%23nowhere:test"), 404, "M_NOT_FOUND", documented=False
    )
    r = await post(client, b_tok, "/rooms/!nowhere:test/join")
    assert r.status_code in (403, 404), r.text
    checked(await post(client, b_tok, "/join/nonsense"), 400, "M_INVALID_PARAM", documented=False)
    checked(
        await post(client, b_tok, f"/rooms/{private}/join", {"reason": 1}),
        400,
        "M_BAD_JSON",
        documented=False,
    )
    r = await client.post(f"{V3}/rooms/{private}/join")
    checked(r, 401, "M_MISSING_TOKEN", documented=False)


async def test_invite_then_join(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(client, a_tok, preset="private_chat")
    body = checked(
        await post(client, a_tok, f"/rooms/{room_id}/invite", {"user_id": bob, "reason": "tea?"})
    )
    assert body == {}
    event = await membership_of(client, a_tok, room_id, bob)
    assert event["content"]["membership"] == "invite"
    assert event["content"]["reason"] == "tea?"
    assert event["sender"] == alice
    r = await client.get(f"{V3}/sync", headers=auth_header(b_tok))
    assert room_id in r.json()["rooms"]["invite"]
    checked(await post(client, b_tok, f"/rooms/{room_id}/join"))
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(b_tok))
    assert checked(r) == {"joined_rooms": [room_id]}
    # Inviting someone already joined is refused.
    checked(
        await post(client, a_tok, f"/rooms/{room_id}/invite", {"user_id": bob}), 403, "M_FORBIDDEN"
    )


async def test_invite_errors(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, _ = await register(client, "carol")
    public = await create(client, a_tok, preset="public_chat")
    checked(await post(client, b_tok, f"/rooms/{public}/join"))
    # public_chat: inviting needs power level 50; bob has 0.
    checked(
        await post(client, b_tok, f"/rooms/{public}/invite", {"user_id": carol}), 403, "M_FORBIDDEN"
    )
    # Not in the room at all.
    private = await create(client, a_tok, preset="private_chat")
    checked(
        await post(client, b_tok, f"/rooms/{private}/invite", {"user_id": carol}),
        403,
        "M_FORBIDDEN",
    )
    # Not validated: inviting.yaml's path ends in a space, so the schema index only knows
    # the third-party form of /invite, which documents no 400.
    checked(
        await post(client, a_tok, f"/rooms/{private}/invite", {}),
        400,
        "M_MISSING_PARAM",
        documented=False,
    )
    checked(
        await post(client, a_tok, f"/rooms/{private}/invite", {"user_id": 5}),
        400,
        "M_BAD_JSON",
        documented=False,
    )
    checked(
        await post(client, a_tok, f"/rooms/{private}/invite", {"user_id": "bob"}),
        400,
        documented=False,
    )
    checked(
        await post(client, a_tok, f"/rooms/{private}/invite", {"user_id": "@ghost:test"}),
        400,
        documented=False,
    )
    r = await client.get(f"{V3}/rooms/{private}/members", headers=auth_header(a_tok))
    assert [e["state_key"] for e in checked(r)["chunk"]] == [alice]


async def test_reject_invite_by_leaving(client: httpx.AsyncClient) -> None:
    _, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(client, a_tok, preset="private_chat", invite=[bob])
    body = checked(await post(client, b_tok, f"/rooms/{room_id}/leave", {"reason": "no"}))
    assert body == {}
    event = await membership_of(client, a_tok, room_id, bob)
    assert event["content"]["membership"] == "leave"
    assert event["sender"] == bob
    assert event["unsigned"]["prev_content"]["membership"] == "invite"
    # Having declined, bob cannot join an invite-only room.
    checked(await post(client, b_tok, f"/rooms/{room_id}/join"), 403, "M_FORBIDDEN")
    r = await client.get(f"{V3}/sync", headers=auth_header(b_tok))
    assert room_id not in r.json().get("rooms", {}).get("invite", {})


async def test_leave_and_forget(client: httpx.AsyncClient) -> None:
    _, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(client, a_tok, preset="public_chat")
    checked(await post(client, b_tok, f"/rooms/{room_id}/join"))
    # Forgetting a room one is still in is refused.
    checked(await post(client, b_tok, f"/rooms/{room_id}/forget"), 400)
    checked(await post(client, b_tok, f"/rooms/{room_id}/leave"))
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(b_tok))
    assert checked(r) == {"joined_rooms": []}
    event = await membership_of(client, a_tok, room_id, bob)
    assert event["content"] == {"membership": "leave"}
    checked(await post(client, b_tok, f"/rooms/{room_id}/leave"))  # idempotent
    checked(await post(client, b_tok, f"/rooms/{room_id}/forget"))
    # A forgotten room does not come back in an initial sync, even with include_leave.
    sync_filter = '{"room":{"include_leave":true}}'
    r = await client.get(f"{V3}/sync", params={"filter": sync_filter}, headers=auth_header(b_tok))
    assert room_id not in r.json().get("rooms", {}).get("leave", {})
    # Forgetting a room one was never in.
    other = await create(client, a_tok)
    r = await post(client, b_tok, f"/rooms/{other}/forget")
    assert r.status_code in (400, 404), r.text
    # Leaving a room one was never in.
    r = await post(client, b_tok, f"/rooms/{other}/leave")
    assert r.status_code in (403, 404), r.text


async def test_kick(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    room_id = await create(client, a_tok, preset="public_chat", room_version="11")
    for tok in (b_tok, c_tok):
        checked(await post(client, tok, f"/rooms/{room_id}/join"))
    # A power-level-0 user may not kick.
    checked(
        await post(client, b_tok, f"/rooms/{room_id}/kick", {"user_id": carol}), 403, "M_FORBIDDEN"
    )
    body = checked(
        await post(client, a_tok, f"/rooms/{room_id}/kick", {"user_id": carol, "reason": "spam"})
    )
    assert body == {}
    event = await membership_of(client, a_tok, room_id, carol)
    assert event["content"]["membership"] == "leave"
    assert event["content"]["reason"] == "spam"
    assert event["sender"] == alice
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(c_tok))
    assert checked(r) == {"joined_rooms": []}
    # A kicked user may come back to a public room.
    checked(await post(client, c_tok, f"/rooms/{room_id}/join"))
    # Nobody kicks someone of a higher power level.
    checked(
        await post(client, b_tok, f"/rooms/{room_id}/kick", {"user_id": alice}), 403, "M_FORBIDDEN"
    )
    # Kicking someone not in the room; kicking an invitee revokes the invite.
    dave, d_tok = await register(client, "dave")
    checked(
        await post(client, a_tok, f"/rooms/{room_id}/kick", {"user_id": dave}), 403, "M_FORBIDDEN"
    )
    checked(
        await post(client, a_tok, f"/rooms/{room_id}/invite", {"user_id": dave}), documented=False
    )
    checked(await post(client, a_tok, f"/rooms/{room_id}/kick", {"user_id": dave}))
    event = await membership_of(client, a_tok, room_id, dave)
    assert event["content"]["membership"] == "leave"
    assert event["unsigned"]["prev_content"]["membership"] == "invite"
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(d_tok))
    assert checked(r) == {"joined_rooms": []}
    checked(
        await post(client, a_tok, f"/rooms/{room_id}/kick", {}),
        400,
        "M_MISSING_PARAM",
        documented=False,
    )


async def test_kick_with_power(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    room_id = await create(client, a_tok, preset="public_chat", room_version="12")
    for tok in (b_tok, c_tok):
        checked(await post(client, tok, f"/rooms/{room_id}/join"))
    r = await client.get(
        f"{V3}/rooms/{room_id}/state/m.room.power_levels/", headers=auth_header(a_tok)
    )
    pl = checked(r)
    pl["users"][bob] = 50
    r = await client.put(
        f"{V3}/rooms/{room_id}/state/m.room.power_levels/", headers=auth_header(a_tok), json=pl
    )
    checked(r)
    checked(await post(client, b_tok, f"/rooms/{room_id}/kick", {"user_id": carol}))
    # v12: the creator has infinite power; a moderator cannot kick or ban them.
    checked(
        await post(client, b_tok, f"/rooms/{room_id}/kick", {"user_id": alice}), 403, "M_FORBIDDEN"
    )
    checked(
        await post(client, b_tok, f"/rooms/{room_id}/ban", {"user_id": alice}), 403, "M_FORBIDDEN"
    )


async def test_ban_and_unban(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    room_id = await create(client, a_tok, preset="public_chat")
    for tok in (b_tok, c_tok):
        checked(await post(client, tok, f"/rooms/{room_id}/join"))
    checked(
        await post(client, b_tok, f"/rooms/{room_id}/ban", {"user_id": carol}), 403, "M_FORBIDDEN"
    )
    body = checked(
        await post(client, a_tok, f"/rooms/{room_id}/ban", {"user_id": carol, "reason": "spam"})
    )
    assert body == {}
    event = await membership_of(client, a_tok, room_id, carol)
    assert event["content"] == {"membership": "ban", "reason": "spam"}
    assert event["sender"] == alice
    # A banned user cannot rejoin, by ID or alias, nor be invited.
    checked(await post(client, c_tok, f"/rooms/{room_id}/join"), 403, "M_FORBIDDEN")
    checked(await post(client, c_tok, f"/join/{room_id}"), 403, "M_FORBIDDEN")
    checked(
        await post(client, a_tok, f"/rooms/{room_id}/invite", {"user_id": carol}),
        403,
        "M_FORBIDDEN",
    )
    # Kicking a banned user does not lift the ban.
    checked(
        await post(client, a_tok, f"/rooms/{room_id}/kick", {"user_id": carol}), 403, "M_FORBIDDEN"
    )
    event = await membership_of(client, a_tok, room_id, carol)
    assert event["content"]["membership"] == "ban"
    # A user not in the room can be banned pre-emptively.
    dave, d_tok = await register(client, "dave")
    checked(await post(client, a_tok, f"/rooms/{room_id}/ban", {"user_id": dave}))
    checked(await post(client, d_tok, f"/rooms/{room_id}/join"), 403, "M_FORBIDDEN")
    # Unban: a PL-0 user may not; the unbanned user is "leave" and may join again.
    checked(
        await post(client, b_tok, f"/rooms/{room_id}/unban", {"user_id": carol}), 403, "M_FORBIDDEN"
    )
    checked(await post(client, a_tok, f"/rooms/{room_id}/unban", {"user_id": carol}))
    event = await membership_of(client, a_tok, room_id, carol)
    assert event["content"]["membership"] == "leave"
    checked(await post(client, c_tok, f"/rooms/{room_id}/join"))
    # Unbanning someone who is not banned.
    checked(
        await post(client, a_tok, f"/rooms/{room_id}/unban", {"user_id": bob}), 403, "M_FORBIDDEN"
    )
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(c_tok))
    assert checked(r) == {"joined_rooms": [room_id]}


async def test_banned_user_leaving_stays_banned(client: httpx.AsyncClient) -> None:
    _, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(client, a_tok, preset="public_chat")
    checked(await post(client, b_tok, f"/rooms/{room_id}/join"))
    checked(await post(client, a_tok, f"/rooms/{room_id}/ban", {"user_id": bob}))
    r = await post(client, b_tok, f"/rooms/{room_id}/leave")
    assert r.status_code in (200, 403), r.text
    event = await membership_of(client, a_tok, room_id, bob)
    assert event["content"]["membership"] == "ban"


async def test_joined_rooms(client: httpx.AsyncClient) -> None:
    _, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    rooms = sorted([await create(client, a_tok, preset="public_chat") for _ in range(3)])
    invited = await create(client, a_tok, invite=[bob])
    for room_id in rooms:
        checked(await post(client, b_tok, f"/rooms/{room_id}/join"))
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(b_tok))
    assert sorted(checked(r)["joined_rooms"]) == rooms  # not the invite
    checked(await post(client, b_tok, f"/rooms/{rooms[0]}/leave"))
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(b_tok))
    assert sorted(checked(r)["joined_rooms"]) == rooms[1:]
    r = await client.get(f"{V3}/joined_rooms", headers=auth_header(a_tok))
    assert sorted(checked(r)["joined_rooms"]) == sorted([*rooms, invited])
    r = await client.get(f"{V3}/joined_rooms")
    checked(r, 401, "M_MISSING_TOKEN", documented=False)


async def test_members(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    dave, _ = await register(client, "dave")
    room_id = await create(client, a_tok, preset="public_chat", invite=[dave])
    checked(await post(client, b_tok, f"/rooms/{room_id}/join"))
    r = await client.get(f"{V3}/sync", headers=auth_header(a_tok))
    at = r.json()["next_batch"]  # alice, bob joined; dave invited
    checked(await post(client, c_tok, f"/rooms/{room_id}/join"))
    checked(await post(client, b_tok, f"/rooms/{room_id}/leave"))

    async def members(**params: str) -> dict[str, str]:
        r = await client.get(
            f"{V3}/rooms/{room_id}/members", params=params, headers=auth_header(a_tok)
        )
        chunk = checked(r)["chunk"]
        assert all(e["type"] == "m.room.member" and e["room_id"] == room_id for e in chunk)
        return {e["state_key"]: e["content"]["membership"] for e in chunk}

    assert await members() == {alice: "join", bob: "leave", carol: "join", dave: "invite"}
    assert await members(membership="join") == {alice: "join", carol: "join"}
    assert await members(not_membership="leave") == {alice: "join", carol: "join", dave: "invite"}
    assert await members(membership="invite") == {dave: "invite"}
    assert await members(at=at) == {alice: "join", bob: "join", dave: "invite"}
    assert await members(at=at, membership="join") == {alice: "join", bob: "join"}
    r = await client.get(
        f"{V3}/rooms/{room_id}/members", params={"membership": "joined"}, headers=auth_header(a_tok)
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    r = await client.get(
        f"{V3}/rooms/{room_id}/members", params={"at": "garbage"}, headers=auth_header(a_tok)
    )
    checked(r, 400, "M_INVALID_PARAM", documented=False)
    # bob left: he sees the members as they were when he left.
    r = await client.get(f"{V3}/rooms/{room_id}/members", headers=auth_header(b_tok))
    assert {e["state_key"]: e["content"]["membership"] for e in checked(r)["chunk"]} == {
        alice: "join",
        bob: "leave",
        carol: "join",
        dave: "invite",
    }
    # A stranger to a non-world-readable room sees nothing.
    _, e_tok = await register(client, "eve")
    r = await client.get(f"{V3}/rooms/{room_id}/members", headers=auth_header(e_tok))
    checked(r, 403, "M_FORBIDDEN", documented=False)  # the spec gives this 403 no body


async def test_joined_members(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    r = await client.put(
        f"{V3}/profile/{bob}/displayname", headers=auth_header(b_tok), json={"displayname": "Bobby"}
    )
    assert r.status_code == 200, r.text
    r = await client.put(
        f"{V3}/profile/{bob}/avatar_url",
        headers=auth_header(b_tok),
        json={"avatar_url": "mxc://test/bob"},
    )
    assert r.status_code == 200, r.text
    room_id = await create(client, a_tok, preset="public_chat", invite=[])
    checked(await post(client, b_tok, f"/rooms/{room_id}/join"))
    r = await client.get(f"{V3}/rooms/{room_id}/joined_members", headers=auth_header(a_tok))
    assert checked(r) == {
        "joined": {
            alice: {"display_name": "alice"},
            bob: {"display_name": "Bobby", "avatar_url": "mxc://test/bob"},
        }
    }
    # A profile change shows in the rooms the user is in.
    r = await client.put(
        f"{V3}/profile/{bob}/displayname",
        headers=auth_header(b_tok),
        json={"displayname": "Robert"},
    )
    assert r.status_code == 200, r.text
    r = await client.get(f"{V3}/rooms/{room_id}/joined_members", headers=auth_header(a_tok))
    assert checked(r)["joined"][bob]["display_name"] == "Robert"
    _, c_tok = await register(client, "carol")
    r = await client.get(f"{V3}/rooms/{room_id}/joined_members", headers=auth_header(c_tok))
    checked(r, 403, "M_FORBIDDEN", documented=False)


async def test_invitees_and_leavers_read_no_current_state(client: httpx.AsyncClient) -> None:
    _, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    room_id = await create(client, a_tok, preset="private_chat", invite=[bob, carol])
    checked(await post(client, c_tok, f"/rooms/{room_id}/join"))
    checked(await post(client, c_tok, f"/rooms/{room_id}/leave"))
    # An invitee has the invite's stripped state, nothing more (as if not a member yet).
    for path in (
        "state",
        "members",
        "joined_members",
        "messages?dir=b",
        "state/m.room.join_rules/",
    ):
        r = await client.get(f"{V3}/rooms/{room_id}/{path}", headers=auth_header(b_tok))
        checked(r, 403, "M_FORBIDDEN", documented=False)
    # Someone who left sees /members as of the leave, but joined_members is for members.
    r = await client.get(f"{V3}/rooms/{room_id}/members", headers=auth_header(c_tok))
    checked(r)
    r = await client.get(f"{V3}/rooms/{room_id}/joined_members", headers=auth_header(c_tok))
    checked(r, 403, "M_FORBIDDEN", documented=False)


async def test_joining_again_with_the_same_content_sends_nothing(client: httpx.AsyncClient) -> None:
    _, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(client, a_tok, preset="public_chat")
    checked(await post(client, b_tok, f"/rooms/{room_id}/join"))
    first = (await membership_of(client, a_tok, room_id, bob))["event_id"]
    checked(await post(client, b_tok, f"/join/{room_id}"))
    assert (await membership_of(client, a_tok, room_id, bob))["event_id"] == first
    # Another content (a reason) is a new event.
    checked(await post(client, b_tok, f"/join/{room_id}", {"reason": "again"}))
    assert (await membership_of(client, a_tok, room_id, bob))["event_id"] != first


async def test_join_with_custom_content(client: httpx.AsyncClient) -> None:
    _, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    carol, c_tok = await register(client, "carol")
    room_id = await create(client, a_tok, preset="public_chat", room_alias_name="hall")
    # Keys beside the spec's go into the member event (as Synapse); those only the server
    # sets do not.
    extra = {"foo": "bar", "membership": "leave", "join_authorised_via_users_server": bob}
    checked(await post(client, b_tok, f"/rooms/{room_id}/join", extra))
    content = (await membership_of(client, a_tok, room_id, bob))["content"]
    assert content["foo"] == "bar" and content["membership"] == "join"
    assert "join_authorised_via_users_server" not in content
    checked(await post(client, c_tok, "/join/%23hall:test", {"foo": {"nested": [1]}}))
    content = (await membership_of(client, a_tok, room_id, carol))["content"]
    assert content["foo"] == {"nested": [1]} and content["displayname"] == "carol"
    for bad, errcode in [({"reason": 5}, "M_BAD_JSON"), ({"n": 2**60}, "M_BAD_JSON")]:
        r = await post(client, c_tok, f"/rooms/{room_id}/join", bad)
        assert (r.status_code, r.json()["errcode"]) == (400, errcode), bad


async def test_own_membership_through_the_state_endpoint(client: httpx.AsyncClient) -> None:
    alice, a_tok = await register(client, "alice")
    bob, b_tok = await register(client, "bob")
    room_id = await create(client, a_tok, preset="public_chat")
    state = f"{V3}/rooms/{room_id}/state/m.room.member"
    # Joining with a per-room display name...
    r = await client.put(
        f"{state}/{bob}",
        headers=auth_header(b_tok),
        json={"membership": "join", "displayname": "Bobby"},
    )
    assert r.status_code == 200, r.text
    event = await membership_of(client, a_tok, room_id, bob)
    assert (event["event_id"], event["content"]["displayname"]) == (r.json()["event_id"], "Bobby")
    # ...changing it while joined...
    r = await client.put(
        f"{state}/{bob}",
        headers=auth_header(b_tok),
        json={"membership": "join", "displayname": "B"},
    )
    assert r.status_code == 200, r.text
    assert (await membership_of(client, a_tok, room_id, bob))["content"]["displayname"] == "B"
    # ...and leaving.
    r = await client.put(f"{state}/{bob}", headers=auth_header(b_tok), json={"membership": "leave"})
    assert r.status_code == 200, r.text
    assert (await membership_of(client, a_tok, room_id, bob))["content"]["membership"] == "leave"
    # Anything else of m.room.member goes through the membership endpoints.
    for target, content in [
        (bob, {"membership": "invite"}),
        (alice, {"membership": "leave"}),
        (alice, {"membership": "ban"}),
    ]:
        r = await client.put(
            f"{state}/{target}",
            headers=auth_header(a_tok if target == bob else b_tok),
            json=content,
        )
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), content
    for content in [{}, {"membership": 1}, {"membership": "join", "reason": 2}]:
        r = await client.put(f"{state}/{bob}", headers=auth_header(b_tok), json=content)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_BAD_JSON"), content
