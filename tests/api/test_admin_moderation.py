"""Account moderation: shadow-ban, suspension (spec v1.13), locking (v1.12) and invite
blocking (v1.18), set through the admin API; on both databases."""

from __future__ import annotations

import httpx

from homeserver.app import Homeserver
from tests.api.admin_helpers import call, make_admin
from tests.api.sliding_helpers import ids, room_list, send, sliding
from tests.helpers import DEFAULT_PASSWORD, auth_header, create_room, login, register

V3 = "/_matrix/client/v3"
CLIENT = "/_matrix/client"


async def _messages(client: httpx.AsyncClient, token: str, room: str) -> list[str]:
    r = await client.get(f"{V3}/rooms/{room}/messages?dir=b&limit=50", headers=auth_header(token))
    assert r.status_code == 200, r.text
    return [e["content"].get("body") for e in r.json()["chunk"] if e["type"] == "m.room.message"]


async def test_shadow_banned_sends_reach_nobody(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, alice_token, preset="public_chat")
    r = await client.post(f"{V3}/join/{room}", headers=auth_header(bob_token), json={})
    assert r.status_code == 200
    await send(client, bob_token, room, "before")
    assert await call(client, admin, "POST", f"/v1/users/{bob}/shadow_ban") == {}
    assert (await call(client, admin, "GET", f"/v2/users/{bob}"))["shadow_banned"] is True
    # The send looks successful, with a well-formed ID, the same on a retry...
    first = await send(client, bob_token, room, "hidden")
    assert first.startswith("$") and await send(client, bob_token, room, "hidden") == first
    # ...but the event exists for nobody.
    assert "hidden" not in await _messages(client, alice_token, room)
    r = await client.get(f"{V3}/rooms/{room}/event/{first}", headers=auth_header(alice_token))
    assert r.status_code == 404
    # So do invites: answered as sent, never delivered.
    carol, carol_token = await register(client, "carol")
    own = await create_room(client, bob_token)
    r = await client.post(
        f"{V3}/rooms/{own}/invite", headers=auth_header(bob_token), json={"user_id": carol}
    )
    assert r.status_code == 200, r.text
    r = await client.get(f"{V3}/sync", headers=auth_header(carol_token))
    assert "invite" not in r.json().get("rooms", {})
    await call(client, admin, "DELETE", f"/v1/users/{bob}/shadow_ban")
    await send(client, bob_token, room, "after")
    assert await _messages(client, alice_token, room) == ["after", "before"]
    await call(client, admin, "POST", "/v1/users/@ghost:test/shadow_ban", None, 404, "M_NOT_FOUND")
    await call(
        client, admin, "POST", "/v1/users/@x:elsewhere/shadow_ban", None, 400, "M_INVALID_PARAM"
    )
    assert alice


async def test_suspended_user_reads_and_leaves_but_cannot_act(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    admin = await make_admin(hs, client)
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, alice_token, preset="public_chat")
    other = await create_room(client, alice_token, preset="public_chat")
    r = await client.post(f"{V3}/join/{room}", headers=auth_header(bob_token), json={})
    assert r.status_code == 200
    own = await send(client, bob_token, room, "mine")
    alices = await send(client, alice_token, room, "hers")
    done = await call(client, admin, "PUT", f"/v1/suspend/{bob}", {"suspend": True})
    assert done == {f"user_{bob}_suspended": True}
    r = await client.get(f"{CLIENT}/v1/admin/suspend/{bob}", headers=auth_header(admin))
    assert r.json() == {"suspended": True}
    h = auth_header(bob_token)
    for method, path, body in (
        ("PUT", f"{V3}/rooms/{room}/send/m.room.message/t1", {"msgtype": "m.text", "body": "x"}),
        ("PUT", f"{V3}/rooms/{room}/state/m.room.topic", {"topic": "x"}),
        ("POST", f"{V3}/join/{other}", {}),
        ("POST", f"{V3}/rooms/{room}/invite", {"user_id": alice}),
        ("POST", f"{V3}/createRoom", {}),
        ("PUT", f"{V3}/profile/{bob}/displayname", {"displayname": "x"}),
        ("PUT", f"{V3}/rooms/{room}/redact/{alices}/t2", {}),
    ):
        r = await client.request(method, path, headers=h, json=body)
        assert (r.status_code, r.json().get("errcode")) == (403, "M_USER_SUSPENDED"), (path, r.text)
    # Reading, redacting their own events and leaving stay possible.
    assert "hers" in await _messages(client, bob_token, room)
    r = await client.put(f"{V3}/rooms/{room}/redact/{own}/t3", headers=h, json={})
    assert r.status_code == 200, r.text
    r = await client.post(f"{V3}/rooms/{room}/leave", headers=h, json={})
    assert r.status_code == 200, r.text
    # Lifted through the spec's endpoint.
    r = await client.put(
        f"{CLIENT}/v1/admin/suspend/{bob}", headers=auth_header(admin), json={"suspended": False}
    )
    assert r.json() == {"suspended": False}
    r = await client.post(f"{V3}/join/{other}", headers=h, json={})
    assert r.status_code == 200, r.text
    await call(client, admin, "PUT", f"/v1/suspend/{bob}", {}, 400, "M_MISSING_PARAM")
    await call(client, admin, "PUT", f"/v1/suspend/{bob}", {"suspend": 1}, 400, "M_BAD_JSON")
    await call(
        client, admin, "PUT", "/v1/suspend/@root:test", {"suspend": True}, 403, "M_FORBIDDEN"
    )


async def test_locked_user_gets_soft_logout_but_may_log_out(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    admin = await make_admin(hs, client)
    bob, bob_token = await register(client, "bob")
    refresh_token = (await login(client, "bob", refresh_token=True))["refresh_token"]
    r = await client.put(
        f"{CLIENT}/v1/admin/lock/{bob}", headers=auth_header(admin), json={"locked": True}
    )
    assert r.json() == {"locked": True}
    r = await client.get(f"{V3}/account/whoami", headers=auth_header(bob_token))
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_USER_LOCKED" and r.json()["soft_logout"] is True
    assert (await call(client, admin, "GET", f"/v2/users/{bob}"))["locked"] is True
    # Locked accounts are listed only when asked for.
    names = [u["name"] for u in (await call(client, admin, "GET", "/v2/users"))["users"]]
    assert bob not in names
    assert bob in [
        u["name"] for u in (await call(client, admin, "GET", "/v2/users?locked=true"))["users"]
    ]
    # Unlocked: the same token works again (it was never invalidated).
    await call(client, admin, "PUT", f"/v2/users/{bob}", {"locked": False})
    r = await client.get(f"{V3}/account/whoami", headers=auth_header(bob_token))
    assert r.status_code == 200
    await call(client, admin, "PUT", f"/v2/users/{bob}", {"locked": True})
    r = await client.post(f"{V3}/logout", headers=auth_header(bob_token), json={})
    assert r.status_code == 200, r.text
    r = await client.get(f"{CLIENT}/v1/admin/lock/{bob}", headers=auth_header(admin))
    assert r.json() == {"locked": True}
    # No new token while locked (spec, "Soft logout"): neither by login nor by refresh.
    r = await client.post(
        f"{V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "bob"},
            "password": DEFAULT_PASSWORD,
        },
    )
    assert (r.status_code, r.json()["errcode"]) == (401, "M_USER_LOCKED")
    r = await client.post(f"{V3}/refresh", json={"refresh_token": refresh_token})
    assert (r.status_code, r.json()["errcode"]) == (401, "M_USER_LOCKED")
    await call(client, admin, "PUT", f"/v2/users/{bob}", {"locked": False})
    r = await client.post(f"{V3}/refresh", json={"refresh_token": refresh_token})
    assert r.status_code == 200, r.text
    for body in ({}, {"locked": "yes"}):
        r = await client.put(f"{CLIENT}/v1/admin/lock/{bob}", headers=auth_header(admin), json=body)
        assert r.status_code == 400, r.text
    r = await client.get(f"{CLIENT}/v1/admin/lock/@ghost:test", headers=auth_header(admin))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")


async def test_invite_blocking(client: httpx.AsyncClient) -> None:
    alice, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    carol, _ = await register(client, "carol")
    r = await client.put(
        f"{V3}/user/{bob}/account_data/m.invite_permission_config",
        headers=auth_header(bob_token),
        json={"default_action": "block"},
    )
    assert r.status_code == 200
    room = await create_room(client, alice_token)
    r = await client.post(
        f"{V3}/rooms/{room}/invite", headers=auth_header(alice_token), json={"user_id": bob}
    )
    assert (r.status_code, r.json()["errcode"]) == (403, "M_INVITE_BLOCKED")
    # createRoom succeeds, without the invitee who blocks invites.
    r = await client.post(
        f"{V3}/createRoom", headers=auth_header(alice_token), json={"invite": [bob, carol]}
    )
    assert r.status_code == 200, r.text
    members = await client.get(
        f"{V3}/rooms/{r.json()['room_id']}/members", headers=auth_header(alice_token)
    )
    invited = {
        e["state_key"] for e in members.json()["chunk"] if e["content"]["membership"] == "invite"
    }
    assert invited == {carol}
    # Without default_action, invites are accepted again.
    await client.put(
        f"{V3}/user/{bob}/account_data/m.invite_permission_config",
        headers=auth_header(bob_token),
        json={},
    )
    r = await client.post(
        f"{V3}/rooms/{room}/invite", headers=auth_header(alice_token), json={"user_id": bob}
    )
    assert r.status_code == 200, r.text


async def test_invites_of_a_blocking_user_are_not_synced(client: httpx.AsyncClient) -> None:
    _, alice_token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, alice_token)
    r = await client.post(
        f"{V3}/rooms/{room}/invite", headers=auth_header(alice_token), json={"user_id": bob}
    )
    assert r.status_code == 200

    async def invites() -> set[str]:
        r = await client.get(f"{V3}/sync", headers=auth_header(bob_token))
        assert r.status_code == 200, r.text
        return set(r.json().get("rooms", {}).get("invite", {}))

    async def sliding_invites() -> set[str]:
        found = await sliding(client, bob_token, {"lists": {"all": room_list()}})
        return set(ids(found))

    assert await invites() == {room} and await sliding_invites() == {room}
    for content, expected in (({"default_action": "block"}, set()), ({}, {room})):
        r = await client.put(
            f"{V3}/user/{bob}/account_data/m.invite_permission_config",
            headers=auth_header(bob_token),
            json=content,
        )
        assert r.status_code == 200
        assert await invites() == expected
        assert await sliding_invites() == expected
