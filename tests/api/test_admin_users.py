"""The admin API on accounts (/_synapse/admin/.../users), on both databases."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from urllib.parse import quote

import httpx

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from tests.api.admin_helpers import call, make_admin, refused_to_non_admins
from tests.conftest import make_config
from tests.helpers import DEFAULT_PASSWORD, auth_header, create_room, login, register, serve

V3 = "/_matrix/client/v3"


async def test_non_admins_are_refused(client: httpx.AsyncClient) -> None:
    bob, token = await register(client, "bob")
    await refused_to_non_admins(
        client,
        token,
        [
            ("GET", "/v2/users", None),
            ("GET", "/v3/users", None),
            ("GET", f"/v2/users/{bob}", None),
            ("PUT", "/v2/users/@new:test", {"password": "long enough password"}),
            ("POST", f"/v1/deactivate/{bob}", {}),
            ("POST", f"/v1/reset_password/{bob}", {"new_password": "another password"}),
            ("GET", f"/v1/whois/{bob}", None),
            ("GET", f"/v2/users/{bob}/devices", None),
            ("POST", f"/v2/users/{bob}/devices", {"device_id": "X"}),
            ("GET", f"/v2/users/{bob}/devices/X", None),
            ("PUT", f"/v2/users/{bob}/devices/X", {}),
            ("DELETE", f"/v2/users/{bob}/devices/X", None),
            ("POST", f"/v2/users/{bob}/delete_devices", {"devices": []}),
            ("POST", f"/v1/users/{bob}/shadow_ban", None),
            ("DELETE", f"/v1/users/{bob}/shadow_ban", None),
            ("PUT", f"/v1/suspend/{bob}", {"suspend": True}),
            ("GET", f"/v1/users/{bob}/override_ratelimit", None),
            ("POST", f"/v1/users/{bob}/override_ratelimit", {}),
            ("DELETE", f"/v1/users/{bob}/override_ratelimit", None),
            ("POST", f"/v1/users/{bob}/login", {}),
            ("GET", f"/v1/users/{bob}/joined_rooms", None),
            ("GET", f"/v1/users/{bob}/accountdata", None),
            ("GET", "/v1/username_available?username=free", None),
        ],
    )
    for method, path, body in (
        ("GET", f"/v1/admin/lock/{bob}", None),
        ("PUT", f"/v1/admin/lock/{bob}", {"locked": False}),
        ("GET", f"/v1/admin/suspend/{bob}", None),
        ("PUT", f"/v1/admin/suspend/{bob}", {"suspended": False}),
        ("GET", f"/v3/admin/whois/{bob}", None),
    ):
        r = await client.request(
            method, "/_matrix/client" + path, headers=auth_header(token), json=body
        )
        assert (r.status_code, r.json()["errcode"]) == (403, "M_FORBIDDEN"), path


async def test_list_users_filters_orders_and_pages(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    admin = await make_admin(hs, client)
    for name in ("carol", "alice", "bob", "dave"):
        clock.advance(1000)
        await register(client, name)
    page = await call(client, admin, "GET", "/v2/users?limit=2")
    assert [u["name"] for u in page["users"]] == ["@alice:test", "@bob:test"]
    assert page["total"] == 5 and page["next_token"] == "2"
    user = page["users"][0]
    assert user["admin"] is False and user["deactivated"] is False and user["is_guest"] is False
    assert user["displayname"] == "alice" and isinstance(user["creation_ts"], int)
    rest = await call(client, admin, "GET", "/v2/users?limit=2&from=2")
    assert [u["name"] for u in rest["users"]] == ["@carol:test", "@dave:test"]
    last = await call(client, admin, "GET", "/v2/users?from=4")
    assert [u["name"] for u in last["users"]] == ["@root:test"] and "next_token" not in last
    newest = await call(client, admin, "GET", "/v2/users?order_by=creation_ts&dir=b&limit=1")
    assert newest["users"][0]["name"] == "@dave:test"
    admins = await call(client, admin, "GET", "/v2/users?admins=true")
    assert [u["name"] for u in admins["users"]] == ["@root:test"]
    assert (await call(client, admin, "GET", "/v2/users?admins=false"))["total"] == 4
    found = await call(client, admin, "GET", "/v2/users?name=AR")
    assert [u["name"] for u in found["users"]] == ["@carol:test"]
    # A % or _ in the search is a character, not a pattern.
    assert (await call(client, admin, "GET", "/v2/users?user_id=%25"))["total"] == 0
    # Deactivated accounts are left out unless asked for.
    await call(client, admin, "POST", "/v1/deactivate/@bob:test", {})
    names = [u["name"] for u in (await call(client, admin, "GET", "/v2/users"))["users"]]
    assert "@bob:test" not in names
    with_gone = await call(client, admin, "GET", "/v2/users?deactivated=true")
    assert with_gone["total"] == 5
    # v3: deactivated filters both ways; absent, it includes them.
    only = await call(client, admin, "GET", "/v3/users?deactivated=true")
    assert [u["name"] for u in only["users"]] == ["@bob:test"]
    assert (await call(client, admin, "GET", "/v3/users?deactivated=false"))["total"] == 4
    assert (await call(client, admin, "GET", "/v3/users"))["total"] == 5
    await call(client, admin, "GET", "/v3/users?deactivated=x", None, 400, "M_INVALID_PARAM")
    for query in (
        "order_by=password",
        "dir=up",
        "from=-1",
        "limit=x",
        "admins=maybe",
        "deactivated=2",
        "name=" + "x" * 2000,
    ):
        await call(client, admin, "GET", f"/v2/users?{query}", None, 400, "M_INVALID_PARAM")


async def test_query_create_and_modify(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    await call(client, admin, "GET", "/v2/users/@nobody:test", None, 404, "M_NOT_FOUND")
    created = await call(
        client,
        admin,
        "PUT",
        "/v2/users/@new:test",
        {
            "password": "a long password",
            "displayname": "New One",
            "threepids": [{"medium": "email", "address": "New@Example.org"}],
            "user_type": "bot",
        },
        201,
    )
    assert created["name"] == "@new:test" and created["displayname"] == "New One"
    assert created["user_type"] == "bot" and created["admin"] is False
    assert [(t["medium"], t["address"]) for t in created["threepids"]] == [
        ("email", "new@example.org")
    ]
    token = (await login(client, "new", "a long password"))["access_token"]
    # Changing: display name (into the user's rooms too), admin, user type cleared.
    room = await create_room(client, token)
    changed = await call(
        client,
        admin,
        "PUT",
        "/v2/users/@new:test",
        {"displayname": "Renamed", "admin": True, "user_type": None},
    )
    assert changed["displayname"] == "Renamed" and changed["admin"] is True
    assert changed["user_type"] is None
    r = await client.get(
        f"{V3}/rooms/{room}/state/m.room.member/@new:test", headers=auth_header(token)
    )
    assert r.json()["displayname"] == "Renamed"
    # The new admin's token works as an admin's at once on this worker.
    await call(client, token, "GET", "/v2/users")
    # A new password logs the devices out unless told not to.
    await call(client, admin, "PUT", "/v2/users/@new:test", {"password": "second password"})
    r = await client.get(f"{V3}/account/whoami", headers=auth_header(token))
    assert r.status_code == 401
    await login(client, "new", "second password")
    # Deactivating through PUT; reactivating needs a password.
    await call(client, admin, "PUT", "/v2/users/@new:test", {"deactivated": True})
    got = await call(client, admin, "GET", "/v2/users/@new:test")
    assert got["deactivated"] is True and got["threepids"] == []
    await call(
        client, admin, "PUT", "/v2/users/@new:test", {"deactivated": False}, 400, "M_MISSING_PARAM"
    )
    await call(
        client,
        admin,
        "PUT",
        "/v2/users/@new:test",
        {"deactivated": False, "password": "third password"},
    )
    await login(client, "new", "third password")


async def test_put_user_bad_input(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    await register(client, "taken")
    for path, body, status, errcode in (
        ("/v2/users/@x:test", {"password": 5}, 400, "M_BAD_JSON"),
        ("/v2/users/@x:test", {"admin": "yes"}, 400, "M_BAD_JSON"),
        ("/v2/users/@x:test", {"password": "short"}, 400, "M_WEAK_PASSWORD"),
        ("/v2/users/@x:test", {"user_type": "wizard"}, 400, "M_INVALID_PARAM"),
        ("/v2/users/@x:test", {"avatar_url": "http://x"}, 400, "M_INVALID_PARAM"),
        (
            "/v2/users/@x:test",
            {"threepids": [{"medium": "msisdn", "address": "1"}]},
            400,
            "M_INVALID_PARAM",
        ),
        ("/v2/users/@x:test", {"deactivated": True}, 400, "M_INVALID_PARAM"),
        ("/v2/users/@x:elsewhere", {}, 400, "M_INVALID_PARAM"),
        ("/v2/users/not-a-user", {}, 400, "M_INVALID_PARAM"),
        ("/v2/users/@UPPER:test", {}, 400, "M_INVALID_USERNAME"),
        ("/v2/users/@root:test", {"admin": False}, 403, "M_FORBIDDEN"),
    ):
        await call(client, admin, "PUT", path, body, status, errcode)
    r = await client.put(
        "/_synapse/admin/v2/users/@x:test", headers=auth_header(admin), content=b"{nope"
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_NOT_JSON")
    # An address held by another account stays with it.
    await call(
        client,
        admin,
        "PUT",
        "/v2/users/@taken:test",
        {"threepids": [{"medium": "email", "address": "a@b.c"}]},
    )
    await call(
        client,
        admin,
        "PUT",
        "/v2/users/@other:test",
        {"threepids": [{"medium": "email", "address": "a@b.c"}]},
        400,
        "M_THREEPID_IN_USE",
    )


async def test_deactivate_with_erase_and_reset_password(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    admin = await make_admin(hs, client)
    bob, token = await register(client, "bob")
    room = await create_room(client, token)
    await call(
        client,
        admin,
        "POST",
        f"/v1/reset_password/{bob}",
        {"new_password": "new long password", "logout_devices": False},
    )
    assert (await client.get(f"{V3}/account/whoami", headers=auth_header(token))).status_code == 200
    await login(client, "bob", "new long password")
    await call(
        client,
        admin,
        "POST",
        f"/v1/reset_password/{bob}",
        {"new_password": "x"},
        400,
        "M_WEAK_PASSWORD",
    )
    await call(client, admin, "POST", f"/v1/reset_password/{bob}", {}, 400, "M_MISSING_PARAM")
    await call(
        client,
        admin,
        "POST",
        "/v1/reset_password/@ghost:test",
        {"new_password": "new long password"},
        404,
        "M_NOT_FOUND",
    )
    done = await call(client, admin, "POST", f"/v1/deactivate/{bob}", {"erase": True})
    assert done == {"id_server_unbind_result": "success"}
    assert (await client.get(f"{V3}/account/whoami", headers=auth_header(token))).status_code == 401
    got = await call(client, admin, "GET", f"/v2/users/{bob}")
    assert got["deactivated"] is True and got["erased"] is True and got["displayname"] is None
    assert await call(client, admin, "GET", f"/v1/users/{bob}/joined_rooms") == {
        "joined_rooms": [],
        "total": 0,
    }
    assert room
    await call(client, admin, "POST", f"/v1/deactivate/{bob}", {"erase": "yes"}, 400, "M_BAD_JSON")
    await call(client, admin, "POST", "/v1/deactivate/@ghost:test", {}, 404, "M_NOT_FOUND")
    await call(
        client,
        admin,
        "POST",
        "/v1/reset_password/" + bob,
        {"new_password": "new long password"},
        403,
        "M_FORBIDDEN",
    )


async def test_devices_and_whois(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    bob, _ = await register(client, "bob")
    session = await login(client, "bob", device_id="PHONE")
    r = await client.get(
        f"{V3}/account/whoami",
        headers={**auth_header(session["access_token"]), "User-Agent": "TestPhone/1.0"},
    )
    assert r.status_code == 200
    listed = await call(client, admin, "GET", f"/v2/users/{bob}/devices")
    assert listed["total"] == 2
    phone = next(d for d in listed["devices"] if d["device_id"] == "PHONE")
    assert phone["user_id"] == bob and phone["last_seen_user_agent"] == "TestPhone/1.0"
    assert phone["last_seen_ip"] == "127.0.0.1" and isinstance(phone["last_seen_ts"], int)
    who = await call(client, admin, "GET", f"/v1/whois/{bob}")
    connections = [c for s in who["devices"][""]["sessions"] for c in s["connections"]]
    assert {"ip": "127.0.0.1", "user_agent": "TestPhone/1.0"}.items() <= connections[-1].items()
    assert who["user_id"] == bob
    # The spec's own whois answers the same.
    r = await client.get(f"{V3}/admin/whois/{bob}", headers=auth_header(admin))
    assert r.json() == who
    await call(client, admin, "PUT", f"/v2/users/{bob}/devices/PHONE", {"display_name": "Pixel"})
    assert (await call(client, admin, "GET", f"/v2/users/{bob}/devices/PHONE"))[
        "display_name"
    ] == "Pixel"
    await call(client, admin, "POST", f"/v2/users/{bob}/devices", {"device_id": "NEWONE"})
    await call(client, admin, "POST", f"/v2/users/{bob}/devices", {"device_id": "NEWONE"})
    await call(client, admin, "DELETE", f"/v2/users/{bob}/devices/PHONE")
    r = await client.get(f"{V3}/account/whoami", headers=auth_header(session["access_token"]))
    assert r.status_code == 401
    await call(client, admin, "POST", f"/v2/users/{bob}/delete_devices", {"devices": ["NEWONE"]})
    assert (await call(client, admin, "GET", f"/v2/users/{bob}/devices"))["total"] == 1
    for method, path, body, status, errcode in (
        ("GET", f"/v2/users/{bob}/devices/NOPE", None, 404, "M_NOT_FOUND"),
        ("PUT", f"/v2/users/{bob}/devices/NOPE", {"display_name": "x"}, 404, "M_NOT_FOUND"),
        ("PUT", f"/v2/users/{bob}/devices/NOPE", {"display_name": 3}, 400, "M_BAD_JSON"),
        ("POST", f"/v2/users/{bob}/devices", {}, 400, "M_MISSING_PARAM"),
        ("POST", f"/v2/users/{bob}/devices", {"device_id": ""}, 400, "M_INVALID_PARAM"),
        ("POST", f"/v2/users/{bob}/delete_devices", {"devices": "A"}, 400, "M_BAD_JSON"),
        ("GET", "/v2/users/@ghost:test/devices", None, 404, "M_NOT_FOUND"),
        ("GET", "/v1/whois/@ghost:test", None, 404, "M_NOT_FOUND"),
        ("GET", "/v1/whois/@bob:elsewhere", None, 400, "M_INVALID_PARAM"),
    ):
        await call(client, admin, method, path, body, status, errcode)


async def test_session_addresses_are_forgotten_after_28_days(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    admin = await make_admin(hs, client)
    bob, token = await register(client, "bob")
    await client.get(f"{V3}/account/whoami", headers=auth_header(token))
    who = await call(client, admin, "GET", f"/v1/whois/{bob}")
    assert who["devices"][""]["sessions"]
    clock.advance(27 * 24 * 3600 * 1000)
    await hs.session_recorder.prune()
    assert (await call(client, admin, "GET", f"/v1/whois/{bob}"))["devices"][""]["sessions"]
    clock.advance(2 * 24 * 3600 * 1000)
    await hs.session_recorder.prune()
    who = await call(client, admin, "GET", f"/v1/whois/{bob}")
    assert who["devices"][""]["sessions"] == []


async def test_login_as_user(client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock) -> None:
    admin = await make_admin(hs, client)
    bob, _ = await register(client, "bob")
    token = (await call(client, admin, "POST", f"/v1/users/{bob}/login", {}))["access_token"]
    r = await client.get(f"{V3}/account/whoami", headers=auth_header(token))
    assert r.json()["user_id"] == bob
    # No device of Bob's appears.
    assert (await call(client, admin, "GET", f"/v2/users/{bob}/devices"))["total"] == 1
    until = clock.now_ms() + 1000
    short = (
        await call(client, admin, "POST", f"/v1/users/{bob}/login", {"valid_until_ms": until})
    )["access_token"]
    clock.advance(2000)
    r = await client.get(f"{V3}/account/whoami", headers=auth_header(short))
    assert r.status_code == 401
    await call(client, admin, "POST", "/v1/users/@root:test/login", {}, 400, "M_INVALID_PARAM")
    await call(
        client,
        admin,
        "POST",
        f"/v1/users/{bob}/login",
        {"valid_until_ms": 1},
        400,
        "M_INVALID_PARAM",
    )
    await call(
        client, admin, "POST", f"/v1/users/{bob}/login", {"valid_until_ms": "x"}, 400, "M_BAD_JSON"
    )
    await call(client, admin, "POST", "/v1/users/@ghost:test/login", {}, 404, "M_NOT_FOUND")


async def test_joined_rooms_account_data_and_username(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    admin = await make_admin(hs, client)
    bob, token = await register(client, "bob")
    room = await create_room(client, token)
    r = await client.put(
        f"{V3}/user/{bob}/account_data/org.example.setting",
        json={"on": True},
        headers=auth_header(token),
    )
    assert r.status_code == 200
    r = await client.put(
        f"{V3}/user/{bob}/rooms/{room}/account_data/org.example.room",
        json={"n": 1},
        headers=auth_header(token),
    )
    assert r.status_code == 200
    assert await call(client, admin, "GET", f"/v1/users/{bob}/joined_rooms") == {
        "joined_rooms": [room],
        "total": 1,
    }
    data = (await call(client, admin, "GET", f"/v1/users/{bob}/accountdata"))["account_data"]
    assert data["global"]["org.example.setting"] == {"on": True}
    assert data["rooms"] == {room: {"org.example.room": {"n": 1}}}
    await call(client, admin, "GET", "/v1/users/@ghost:test/accountdata", None, 404, "M_NOT_FOUND")
    assert await call(client, admin, "GET", "/v1/username_available?username=free") == {
        "available": True
    }
    await call(
        client, admin, "GET", "/v1/username_available?username=BOB", None, 400, "M_USER_IN_USE"
    )
    await call(
        client,
        admin,
        "GET",
        "/v1/username_available?username=a%20b",
        None,
        400,
        "M_INVALID_USERNAME",
    )
    await call(client, admin, "GET", "/v1/username_available", None, 400, "M_MISSING_PARAM")


async def test_ratelimit_override(tmp_path: Path, db_url: str, clock: FakeClock) -> None:
    config = make_config(tmp_path, db_url, rate_limits={"enabled": True})
    async with serve(config, clock) as (hs, client):
        await _ratelimit_override(hs, client)


async def _ratelimit_override(hs: Homeserver, client: httpx.AsyncClient) -> None:
    admin = await make_admin(hs, client)
    bob, token = await register(client, "bob")
    room = await create_room(client, token)
    assert await call(client, admin, "GET", f"/v1/users/{bob}/override_ratelimit") == {}
    set_to = await call(
        client,
        admin,
        "POST",
        f"/v1/users/{bob}/override_ratelimit",
        {"messages_per_second": 1, "burst_count": 2},
    )
    assert set_to == {"messages_per_second": 1, "burst_count": 2}
    assert await call(client, admin, "GET", f"/v1/users/{bob}/override_ratelimit") == set_to

    async def send(n: int) -> int:
        r = await client.put(
            f"{V3}/rooms/{room}/send/m.room.message/t{n}",
            json={"msgtype": "m.text", "body": "hi"},
            headers=auth_header(token),
        )
        return r.status_code

    assert [await send(n) for n in range(3)] == [200, 200, 429]
    # 0 is "not limited".
    await call(client, admin, "POST", f"/v1/users/{bob}/override_ratelimit", {})
    assert {await send(n) for n in range(3, 40)} == {200}
    await call(client, admin, "DELETE", f"/v1/users/{bob}/override_ratelimit")
    assert await call(client, admin, "GET", f"/v1/users/{bob}/override_ratelimit") == {}
    await call(
        client,
        admin,
        "POST",
        f"/v1/users/{bob}/override_ratelimit",
        {"messages_per_second": -1},
        400,
        "M_BAD_JSON",
    )
    await call(
        client,
        admin,
        "POST",
        f"/v1/users/{bob}/override_ratelimit",
        {"burst_count": "3"},
        400,
        "M_BAD_JSON",
    )
    await call(
        client, admin, "GET", "/v1/users/@ghost:test/override_ratelimit", None, 404, "M_NOT_FOUND"
    )


async def test_user_id_with_encoded_characters(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    bob, _ = await register(client, "bob")
    got = await call(client, admin, "GET", f"/v2/users/{quote(bob)}")
    assert got["name"] == bob
    assert DEFAULT_PASSWORD


async def test_memberships_pushers_admin_flag_and_threepid_lookup(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    config = make_config(
        tmp_path,
        db_url,
        push={"allow_http": True, "poll_interval_ms": 600_000},
        outbound={"allow_addresses": ["127.0.0.1/32"]},
    )
    async with serve(config, clock) as (hs, client):
        await _memberships_pushers_admin_flag_and_threepid_lookup(hs, client)


async def _memberships_pushers_admin_flag_and_threepid_lookup(
    hs: Homeserver, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(hs, client)
    bob, token = await register(client, "bob")
    await refused_to_non_admins(
        client,
        token,
        [
            ("GET", f"/v1/users/{bob}/memberships", None),
            ("GET", f"/v1/users/{bob}/pushers", None),
            ("GET", f"/v1/users/{bob}/admin", None),
            ("PUT", f"/v1/users/{bob}/admin", {"admin": True}),
            ("GET", "/v1/threepid/email/users/a@b.c", None),
        ],
    )
    kept = await create_room(client, token)
    left = await create_room(client, token)
    r = await client.post(f"{V3}/rooms/{left}/leave", headers=auth_header(token), json={})
    assert r.status_code == 200
    assert await call(client, admin, "GET", f"/v1/users/{bob}/memberships") == {
        "memberships": dict(sorted({kept: "join", left: "leave"}.items()))
    }
    r = await client.post(
        f"{V3}/pushers/set",
        headers=auth_header(token),
        json={
            "kind": "http",
            "app_id": "org.example.app",
            "pushkey": "key1",
            "app_display_name": "App",
            "device_display_name": "Phone",
            "lang": "en",
            "data": {"url": "http://127.0.0.1:1/_matrix/push/v1/notify"},
        },
    )
    assert r.status_code == 200, r.text
    found = await call(client, admin, "GET", f"/v1/users/{bob}/pushers")
    assert found["total"] == 1 and found["pushers"][0]["pushkey"] == "key1"
    assert await call(client, admin, "GET", f"/v1/users/{bob}/admin") == {"admin": False}
    await call(client, admin, "PUT", f"/v1/users/{bob}/admin", {"admin": True})
    assert await call(client, admin, "GET", f"/v1/users/{bob}/admin") == {"admin": True}
    await call(client, token, "GET", "/v2/users")  # at once
    await call(
        client, admin, "PUT", "/v1/users/@root:test/admin", {"admin": False}, 403, "M_FORBIDDEN"
    )
    await call(client, admin, "PUT", f"/v1/users/{bob}/admin", {}, 400, "M_MISSING_PARAM")
    await call(client, admin, "GET", "/v1/users/@ghost:test/admin", None, 404, "M_NOT_FOUND")
    await call(
        client,
        admin,
        "PUT",
        f"/v2/users/{bob}",
        {"threepids": [{"medium": "email", "address": "bob@example.org"}]},
    )
    assert await call(client, admin, "GET", "/v1/threepid/email/users/Bob@Example.org") == {
        "user_id": bob
    }
    await call(
        client, admin, "GET", "/v1/threepid/email/users/no@example.org", None, 404, "M_NOT_FOUND"
    )


def _mac(secret: str, nonce: str, user: str, password: str, admin: bool, kind: str = "") -> str:
    parts = [nonce, user, password, "admin" if admin else "notadmin"] + ([kind] if kind else [])
    return hmac.new(secret.encode(), "\0".join(parts).encode(), hashlib.sha1).hexdigest()


async def test_shared_secret_registration(tmp_path: Path, db_url: str, clock: FakeClock) -> None:
    secret = "a very long shared secret"
    config = make_config(tmp_path, db_url, registration={"enabled": False, "shared_secret": secret})
    async with serve(config, clock) as (_, client):
        path = "/_synapse/admin/v1/register"
        nonce = (await client.get(path)).json()["nonce"]
        body = {
            "nonce": nonce,
            "username": "boss",
            "password": "boss password",
            "admin": True,
            "displayname": "The Boss",
            "mac": _mac(secret, nonce, "boss", "boss password", True),
        }
        r = await client.post(path, json=body)
        assert r.status_code == 200, r.text
        made = r.json()
        assert made["user_id"] == "@boss:test" and made["home_server"] == "test"
        # The new administrator's token works at once, on the admin API too.
        got = await call(client, made["access_token"], "GET", "/v2/users/@boss:test")
        assert got["admin"] is True and got["displayname"] == "The Boss"
        bot_mac = _mac(secret, nonce, "helper", "bot password", False, "bot")
        r = await client.post(
            path,
            json={
                "nonce": nonce,
                "username": "helper",
                "password": "bot password",
                "user_type": "bot",
                "mac": bot_mac,
            },
        )
        assert r.status_code == 200, r.text
        got = await call(client, made["access_token"], "GET", "/v2/users/@helper:test")
        assert got["user_type"] == "bot" and got["admin"] is False
        for changes, status, errcode in (
            ({"mac": "0" * 40}, 403, "M_FORBIDDEN"),
            ({"admin": False}, 403, "M_FORBIDDEN"),  # the MAC covers it
            ({"nonce": "1.2.3"}, 400, "M_UNKNOWN"),
            ({"mac": _mac(secret, nonce, "boss", "boss password", True)}, 400, "M_USER_IN_USE"),
            ({"username": 5}, 400, "M_BAD_JSON"),
            ({"mac": None}, 400, "M_BAD_JSON"),
        ):
            r = await client.post(path, json={**body, **changes})
            assert (r.status_code, r.json()["errcode"]) == (status, errcode), (changes, r.text)
        r = await client.post(path, json={"nonce": nonce})
        assert (r.status_code, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
        bad_name = {
            **body,
            "username": "no way",
            "mac": _mac(secret, nonce, "no way", "boss password", True),
        }
        r = await client.post(path, json=bad_name)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_USERNAME")
        # A nonce lasts a minute.
        clock.advance(61_000)
        late = {
            **body,
            "username": "late",
            "mac": _mac(secret, nonce, "late", "boss password", True),
        }
        r = await client.post(path, json=late)
        assert (r.status_code, r.json()["errcode"]) == (400, "M_UNKNOWN")


async def test_shared_secret_registration_is_off_by_default(client: httpx.AsyncClient) -> None:
    r = await client.get("/_synapse/admin/v1/register")
    assert (r.status_code, r.json()["errcode"]) == (400, "M_UNKNOWN")
