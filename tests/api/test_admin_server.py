"""The admin API on the server: reports, registration tokens, server notices, version; on
both databases."""

from __future__ import annotations

from pathlib import Path

import httpx

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from tests.api.admin_helpers import call, make_admin, refused_to_non_admins
from tests.api.sliding_helpers import send
from tests.conftest import make_config
from tests.helpers import auth_header, create_room, register, serve

V3 = "/_matrix/client/v3"


async def test_non_admins_are_refused(client: httpx.AsyncClient) -> None:
    bob, token = await register(client, "bob")
    await refused_to_non_admins(
        client,
        token,
        [
            ("GET", "/v1/event_reports", None),
            ("GET", "/v1/room_reports", None),
            ("GET", "/v1/user_reports", None),
            ("GET", "/v1/event_reports/1", None),
            ("DELETE", "/v1/event_reports/1", None),
            ("GET", "/v1/registration_tokens", None),
            ("POST", "/v1/registration_tokens/new", {}),
            ("GET", "/v1/registration_tokens/abc", None),
            ("PUT", "/v1/registration_tokens/abc", {}),
            ("DELETE", "/v1/registration_tokens/abc", None),
            ("POST", "/v1/send_server_notice", {"user_id": bob, "content": {}}),
            ("PUT", "/v1/send_server_notice/t1", {"user_id": bob, "content": {}}),
        ],
    )


async def test_server_version(client: httpx.AsyncClient) -> None:
    r = await client.get("/_synapse/admin/v1/server_version")
    assert r.status_code == 200 and isinstance(r.json()["server_version"], str)


async def test_event_reports(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    alice, token = await register(client, "alice")
    bob, bob_token = await register(client, "bob")
    room = await create_room(client, token, preset="public_chat", name="Reported")
    r = await client.post(f"{V3}/join/{room}", headers=auth_header(bob_token), json={})
    assert r.status_code == 200
    bad = [await send(client, bob_token, room, f"bad {n}") for n in range(3)]
    for n, event_id in enumerate(bad):
        r = await client.post(
            f"{V3}/rooms/{room}/report/{event_id}",
            headers=auth_header(token),
            json={"reason": f"spam {n}"},
        )
        assert r.status_code == 200, r.text
    await client.post(f"{V3}/rooms/{room}/report", headers=auth_header(token), json={"reason": "r"})
    await client.post(f"{V3}/users/{bob}/report", headers=auth_header(token), json={"reason": "u"})
    listed = await call(client, admin, "GET", "/v1/event_reports?limit=2")
    assert listed["total"] == 3 and listed["next_token"] == 2
    newest = listed["event_reports"][0]
    assert newest["event_id"] == bad[2] and newest["reason"] == "spam 2"
    assert newest["user_id"] == alice and newest["sender"] == bob
    assert newest["room_id"] == room and newest["name"] == "Reported"
    rest = await call(client, admin, "GET", "/v1/event_reports?from=2")
    assert [e["event_id"] for e in rest["event_reports"]] == [bad[0]] and "next_token" not in rest
    oldest_first = await call(client, admin, "GET", "/v1/event_reports?dir=f")
    assert [e["event_id"] for e in oldest_first["event_reports"]] == bad
    by_sender = await call(client, admin, "GET", f"/v1/event_reports?event_sender_user_id={bob}")
    assert by_sender["total"] == 3
    assert (await call(client, admin, "GET", f"/v1/event_reports?user_id={bob}"))["total"] == 0
    rooms = await call(client, admin, "GET", "/v1/room_reports")
    assert [(e["room_id"], e["reason"]) for e in rooms["room_reports"]] == [(room, "r")]
    users = await call(client, admin, "GET", "/v1/user_reports")
    assert [e["target_user_id"] for e in users["user_reports"]] == [bob]
    by_target = await call(client, admin, "GET", "/v1/user_reports?target_user_id=@x:test")
    assert by_target["total"] == 0
    user_report = users["user_reports"][0]["id"]
    # Each kind's report is read under its own path.
    await call(client, admin, "GET", f"/v1/event_reports/{user_report}", None, 404, "M_NOT_FOUND")
    one_user = await call(client, admin, "GET", f"/v1/user_reports/{user_report}")
    assert one_user["reason"] == "u" and one_user["user_id"] == alice
    one = await call(client, admin, "GET", f"/v1/event_reports/{newest['id']}")
    assert one["event_json"]["content"]["body"] == "bad 2"
    # Resolved: deleted.
    await call(client, admin, "DELETE", f"/v1/event_reports/{newest['id']}")
    await call(client, admin, "GET", f"/v1/event_reports/{newest['id']}", None, 404, "M_NOT_FOUND")
    await call(
        client, admin, "DELETE", f"/v1/event_reports/{newest['id']}", None, 404, "M_NOT_FOUND"
    )
    for path in (
        "/v1/event_reports/x",
        "/v1/event_reports/-1",
        "/v1/event_reports?dir=up",
        "/v1/event_reports?from=-1",
        "/v1/event_reports?limit=a",
    ):
        await call(client, admin, "GET", path, None, 400, "M_INVALID_PARAM")


async def test_registration_tokens(tmp_path: Path, db_url: str, clock: FakeClock) -> None:
    config = make_config(tmp_path, db_url, registration={"enabled": False})
    async with serve(config, clock) as (hs, client):
        admin = await make_admin(hs, client)
        made = await call(
            client,
            admin,
            "POST",
            "/v1/registration_tokens/new",
            {"token": "welcome", "uses_allowed": 1},
        )
        assert made == {
            "token": "welcome",
            "uses_allowed": 1,
            "pending": 0,
            "completed": 0,
            "expiry_time": None,
        }
        generated = await call(client, admin, "POST", "/v1/registration_tokens/new", {"length": 24})
        assert len(generated["token"]) == 24 and generated["uses_allowed"] is None
        # The token lets one person register, then is used up.
        body = {"username": "newcomer", "password": "a long password"}
        r = await client.post(f"{V3}/register", json=body)
        session = r.json()["session"]
        r = await client.post(
            f"{V3}/register",
            json={
                **body,
                "auth": {
                    "type": "m.login.registration_token",
                    "token": "welcome",
                    "session": session,
                },
            },
        )
        assert r.status_code == 200, r.text
        used = await call(client, admin, "GET", "/v1/registration_tokens/welcome")
        assert used["completed"] == 1
        valid = await call(client, admin, "GET", "/v1/registration_tokens?valid=true")
        assert [t["token"] for t in valid["registration_tokens"]] == [generated["token"]]
        invalid = await call(client, admin, "GET", "/v1/registration_tokens?valid=false")
        assert [t["token"] for t in invalid["registration_tokens"]] == ["welcome"]
        every = await call(client, admin, "GET", "/v1/registration_tokens")
        assert len(every["registration_tokens"]) == 2
        # More uses, then an expiry; null lifts the limit.
        more = await call(
            client,
            admin,
            "PUT",
            "/v1/registration_tokens/welcome",
            {"uses_allowed": 5, "expiry_time": clock.now_ms() + 1000},
        )
        assert more["uses_allowed"] == 5 and more["expiry_time"] == clock.now_ms() + 1000
        unlimited = await call(
            client, admin, "PUT", "/v1/registration_tokens/welcome", {"uses_allowed": None}
        )
        assert unlimited["uses_allowed"] is None and unlimited["expiry_time"] is not None
        await call(client, admin, "DELETE", "/v1/registration_tokens/welcome")
        await call(
            client, admin, "GET", "/v1/registration_tokens/welcome", None, 404, "M_NOT_FOUND"
        )
        for method, path, body_, status, errcode in (
            (
                "POST",
                "/v1/registration_tokens/new",
                {"token": generated["token"]},
                400,
                "M_INVALID_PARAM",
            ),
            ("POST", "/v1/registration_tokens/new", {"token": "bad token"}, 400, "M_INVALID_PARAM"),
            ("POST", "/v1/registration_tokens/new", {"token": "x" * 65}, 400, "M_INVALID_PARAM"),
            (
                "POST",
                "/v1/registration_tokens/new",
                {"token": "a", "length": 3},
                400,
                "M_INVALID_PARAM",
            ),
            ("POST", "/v1/registration_tokens/new", {"length": 65}, 400, "M_BAD_JSON"),
            ("POST", "/v1/registration_tokens/new", {"uses_allowed": -1}, 400, "M_BAD_JSON"),
            ("POST", "/v1/registration_tokens/new", {"uses_allowed": "1"}, 400, "M_BAD_JSON"),
            ("POST", "/v1/registration_tokens/new", {"expiry_time": 5}, 400, "M_INVALID_PARAM"),
            ("PUT", "/v1/registration_tokens/nothing", {}, 404, "M_NOT_FOUND"),
            (
                "PUT",
                f"/v1/registration_tokens/{generated['token']}",
                {"expiry_time": 1},
                400,
                "M_INVALID_PARAM",
            ),
            ("DELETE", "/v1/registration_tokens/nothing", None, 404, "M_NOT_FOUND"),
            ("GET", "/v1/registration_tokens?valid=sometimes", None, 400, "M_INVALID_PARAM"),
        ):
            await call(client, admin, method, path, body_, status, errcode)


async def test_server_notices(tmp_path: Path, db_url: str, clock: FakeClock) -> None:
    config = make_config(tmp_path, db_url, server_notices={"enabled": True})
    async with serve(config, clock) as (hs, client):
        admin = await make_admin(hs, client)
        bob, token = await register(client, "bob")
        content = {"msgtype": "m.text", "body": "Maintenance tonight"}
        first = await call(
            client, admin, "POST", "/v1/send_server_notice", {"user_id": bob, "content": content}
        )
        r = await client.get(f"{V3}/sync", headers=auth_header(token))
        invites = r.json()["rooms"]["invite"]
        assert len(invites) == 1
        room = next(iter(invites))
        r = await client.post(f"{V3}/join/{room}", headers=auth_header(token), json={})
        assert r.status_code == 200, r.text
        r = await client.get(f"{V3}/user/{bob}/rooms/{room}/tags", headers=auth_header(token))
        assert "m.server_notice" in r.json()["tags"]
        # A second notice goes to the same room; a retried PUT is sent once.
        again = await call(
            client,
            admin,
            "PUT",
            "/v1/send_server_notice/t1",
            {"user_id": bob, "content": {"msgtype": "m.text", "body": "Two"}},
        )
        retry = await call(
            client,
            admin,
            "PUT",
            "/v1/send_server_notice/t1",
            {"user_id": bob, "content": {"msgtype": "m.text", "body": "Two"}},
        )
        assert again == retry and again != first
        r = await client.get(
            f"{V3}/rooms/{room}/messages?dir=b&limit=10", headers=auth_header(token)
        )
        bodies = [
            e["content"].get("body") for e in r.json()["chunk"] if e["type"] == "m.room.message"
        ]
        assert bodies == ["Two", "Maintenance tonight"]
        senders = {e["sender"] for e in r.json()["chunk"] if e["type"] == "m.room.message"}
        assert senders == {"@server:test"}
        # The user may not write in it.
        r = await client.put(
            f"{V3}/rooms/{room}/send/m.room.message/x",
            headers=auth_header(token),
            json={"msgtype": "m.text", "body": "reply"},
        )
        assert r.status_code == 403
        for body, status, errcode in (
            ({"user_id": bob}, 400, "M_MISSING_PARAM"),
            ({"user_id": bob, "content": "x"}, 400, "M_BAD_JSON"),
            ({"user_id": "@ghost:test", "content": {}}, 404, "M_NOT_FOUND"),
            ({"user_id": "@x:elsewhere", "content": {}}, 400, "M_INVALID_PARAM"),
            ({"user_id": bob, "content": {}, "type": ""}, 400, "M_BAD_JSON"),
        ):
            await call(client, admin, "POST", "/v1/send_server_notice", body, status, errcode)


async def test_server_notices_disabled(client: httpx.AsyncClient, hs: Homeserver) -> None:
    admin = await make_admin(hs, client)
    bob, _ = await register(client, "bob")
    await call(
        client,
        admin,
        "POST",
        "/v1/send_server_notice",
        {"user_id": bob, "content": {"body": "x"}},
        400,
        "M_UNKNOWN",
    )
