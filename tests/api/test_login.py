"""Login, refresh, logout, whoami, password change and deactivation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.ids import UserID
from tests.conftest import make_config
from tests.helpers import DEFAULT_PASSWORD, assert_errors, auth_header, login, register, serve
from tests.openapi_schema import assert_response_matches

LOGIN = "/_matrix/client/v3/login"
REFRESH = "/_matrix/client/v3/refresh"
WHOAMI = "/_matrix/client/v3/account/whoami"
PASSWORD = "/_matrix/client/v3/account/password"
DEACTIVATE = "/_matrix/client/v3/account/deactivate"


def password_auth(
    user: str = "alice", password: str = DEFAULT_PASSWORD, session: str | None = None
) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "password": password,
        "identifier": {"type": "m.id.user", "user": user},
    }
    if session is not None:
        auth["session"] = session
    return auth


async def whoami_status(client: httpx.AsyncClient, token: str) -> tuple[int, Any]:
    response = await client.get(WHOAMI, headers=auth_header(token))
    return response.status_code, response.json()


# --- GET/POST /login ------------------------------------------------------------------------


async def test_login_flows(client: httpx.AsyncClient) -> None:
    response = await client.get(LOGIN)
    assert response.status_code == 200
    assert {"type": "m.login.password"} in response.json()["flows"]
    assert_response_matches("GET", LOGIN, 200, response.json())


async def test_login_with_identifier(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    for user in ("alice", "@alice:test", "ALICE", "@Alice:test"):
        data = await login(client, user)
        assert_response_matches("POST", LOGIN, 200, data)
        assert data["user_id"] == "@alice:test"
        assert data["well_known"]["m.homeserver"]["base_url"]
        assert (await whoami_status(client, data["access_token"]))[0] == 200


async def test_login_with_deprecated_user(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    response = await client.post(
        LOGIN, json={"type": "m.login.password", "user": "alice", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == "@alice:test"


async def test_login_bad_input(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    await assert_errors(
        client,
        "POST",
        LOGIN,
        [
            *(
                (_password_login(user, password), 403, "M_FORBIDDEN")
                for user, password in (
                    ("alice", "wrong password"),
                    ("nobody", DEFAULT_PASSWORD),
                    ("@alice:elsewhere", DEFAULT_PASSWORD),
                    ("not a user", DEFAULT_PASSWORD),
                )
            ),
            # An address bound to no account is a 403 (tests/api/test_threepids.py binds one).
            (
                {
                    "type": "m.login.password",
                    "password": DEFAULT_PASSWORD,
                    "identifier": {
                        "type": "m.id.thirdparty",
                        "medium": "email",
                        "address": "a@example.org",
                    },
                },
                403,
                "M_FORBIDDEN",
            ),
            (
                {
                    "type": "m.login.password",
                    "password": DEFAULT_PASSWORD,
                    "medium": "email",
                    "address": "a@example.org",
                },
                403,
                "M_FORBIDDEN",
            ),
            ({"type": "m.login.token", "token": "abc"}, 400, "M_UNKNOWN"),
            (
                {"identifier": {"type": "m.id.user", "user": "alice"}, "password": "x"},
                400,
                "M_MISSING_PARAM",
            ),
            (
                {"type": "m.login.password", "identifier": {"user": "alice"}, "password": "x"},
                400,
                "M_MISSING_PARAM",
            ),
            (
                {"type": "m.login.password", "identifier": {"type": "m.id.user"}, "password": "x"},
                400,
                "M_MISSING_PARAM",
            ),
            ({"type": "m.login.password", "password": "x"}, 400, "M_MISSING_PARAM"),
            (
                {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}},
                400,
                "M_MISSING_PARAM",
            ),
            (
                {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.unknown"},
                    "password": "x",
                },
                400,
                "M_UNKNOWN",
            ),
            ({"type": 1}, 400, "M_BAD_JSON"),
            (
                {"type": "m.login.password", "identifier": "alice", "password": "x"},
                400,
                "M_BAD_JSON",
            ),
            (
                {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": 1},
                    "password": "x",
                },
                400,
                "M_BAD_JSON",
            ),
            (
                {"type": "m.login.password", "user": "alice", "password": 12345678},
                400,
                "M_BAD_JSON",
            ),
            (
                {
                    "type": "m.login.password",
                    "user": "alice",
                    "password": "x",
                    "refresh_token": "yes",
                },
                400,
                "M_BAD_JSON",
            ),
            (
                {"type": "m.login.password", "user": "alice", "password": "x", "device_id": ""},
                400,
                "M_INVALID_PARAM",
            ),
            ([], 400, "M_BAD_JSON"),
            (b"type=m.login.password", 400, "M_NOT_JSON"),
        ],
    )


async def test_login_reusing_a_device_replaces_its_tokens(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    first = await login(client, "alice", device_id="PHONE", initial_device_display_name="Phone")
    other = await login(client, "alice", device_id="LAPTOP")
    second = await login(client, "alice", device_id="PHONE", initial_device_display_name="Renamed?")
    assert second["device_id"] == "PHONE"
    status, error = await whoami_status(client, first["access_token"])
    assert status == 401 and error["errcode"] == "M_UNKNOWN_TOKEN"
    assert (await whoami_status(client, second["access_token"]))[1]["device_id"] == "PHONE"
    assert (await whoami_status(client, other["access_token"]))[0] == 200
    device = await client.get(
        "/_matrix/client/v3/devices/PHONE", headers=auth_header(second["access_token"])
    )
    assert device.json()["display_name"] == "Phone"  # ignored for a known device


async def test_login_generates_distinct_devices(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    a, b = await login(client, "alice"), await login(client, "alice")
    assert a["device_id"] != b["device_id"]


async def test_login_deactivated(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    response = await client.post(
        DEACTIVATE, headers=auth_header(token), json={"auth": password_auth()}
    )
    assert response.status_code == 200, response.text
    response = await client.post(
        LOGIN,
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": DEFAULT_PASSWORD,
        },
    )
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_USER_DEACTIVATED"


async def test_login_rate_limits(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path, db_url, rate_limits={"enabled": True, "login": {"per_second": 0.1, "burst": 3}}
    )
    clock = FakeClock()
    async with serve(config, clock) as (_, client):
        await register(client, "alice")
        wrong = {
            "type": "m.login.password",
            "password": "wrong password",
            "identifier": {"type": "m.id.user", "user": "alice"},
        }
        for _ in range(3):
            assert (await client.post(LOGIN, json=wrong)).status_code == 403
        response = await client.post(LOGIN, json=wrong)
        assert response.status_code == 429
        assert response.json()["errcode"] == "M_LIMIT_EXCEEDED"
        assert response.json()["retry_after_ms"] == 10_000
        assert "retry-after" in response.headers
        clock.advance(10_000)
        assert (await client.post(LOGIN, json=wrong)).status_code == 403


async def test_login_rate_limit_per_user(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path, db_url, rate_limits={"enabled": True, "login": {"per_second": 0.1, "burst": 2}}
    )
    async with serve(config) as (hs, _):
        await hs.accounts.register_user_admin("alice", DEFAULT_PASSWORD, admin=False)
        await hs.accounts.register_user_admin("bob", DEFAULT_PASSWORD, admin=False)
        first, second = (
            httpx.AsyncClient(
                base_url="http://test", transport=httpx.ASGITransport(app=hs.app, client=(ip, 1234))
            )
            for ip in ("10.0.0.1", "10.0.0.2")
        )
        async with first, second:
            for _ in range(2):
                response = await first.post(LOGIN, json=_password_login("alice", "x"))
                assert response.status_code == 403
            # Another address, same user: that user's bucket is empty.
            response = await second.post(LOGIN, json=_password_login("alice", "x"))
            assert response.status_code == 429
            response = await second.post(LOGIN, json=_password_login("bob", "x"))
            assert response.status_code == 403


def _password_login(user: str, password: str) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "password": password,
        "identifier": {"type": "m.id.user", "user": user},
    }


# --- refresh --------------------------------------------------------------------------------


async def test_refresh_flow(client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock) -> None:
    await register(client, "alice")
    data = await login(client, "alice", refresh_token=True)
    assert_response_matches("POST", LOGIN, 200, data)
    assert data["expires_in_ms"] == hs.config.auth.access_token_lifetime_ms
    clock.advance(data["expires_in_ms"])
    status, error = await whoami_status(client, data["access_token"])
    assert status == 401 and error == {
        "errcode": "M_UNKNOWN_TOKEN",
        "soft_logout": True,
        "error": error["error"],
    }
    response = await client.post(REFRESH, json={"refresh_token": data["refresh_token"]})
    assert response.status_code == 200
    refreshed = response.json()
    assert_response_matches("POST", REFRESH, 200, refreshed)
    assert refreshed["refresh_token"] != data["refresh_token"]
    assert (await whoami_status(client, refreshed["access_token"]))[1]["device_id"] == data[
        "device_id"
    ]
    # A refresh token works once.
    response = await client.post(REFRESH, json={"refresh_token": data["refresh_token"]})
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"
    assert response.json()["soft_logout"] is False


async def test_refresh_bad_input(client: httpx.AsyncClient) -> None:
    await assert_errors(
        client,
        "POST",
        REFRESH,
        [
            ({"refresh_token": "mar_unknown"}, 401, "M_UNKNOWN_TOKEN"),
            ({}, 400, "M_MISSING_PARAM"),
            ({"refresh_token": 1}, 400, "M_BAD_JSON"),
            (b"refresh", 400, "M_NOT_JSON"),
        ],
    )


# --- logout and whoami ----------------------------------------------------------------------


async def test_whoami(client: httpx.AsyncClient) -> None:
    user_id, token = await register(client, "alice")
    response = await client.get(WHOAMI, headers=auth_header(token))
    assert response.status_code == 200
    assert_response_matches("GET", WHOAMI, 200, response.json())
    assert response.json()["user_id"] == user_id and response.json()["is_guest"] is False
    response = await client.get(WHOAMI, params={"access_token": token})
    assert response.status_code == 200


async def test_whoami_without_valid_token(client: httpx.AsyncClient) -> None:
    for headers, errcode in (
        ({}, "M_MISSING_TOKEN"),
        ({"Authorization": "Bearer mat_nope"}, "M_UNKNOWN_TOKEN"),
        ({"Authorization": "Basic abc"}, "M_MISSING_TOKEN"),
    ):
        response = await client.get(WHOAMI, headers=headers)
        assert response.status_code == 401
        assert response.json()["errcode"] == errcode


async def test_logout(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    other = (await login(client, "alice"))["access_token"]
    response = await client.post("/_matrix/client/v3/logout", headers=auth_header(token))
    assert response.status_code == 200 and response.json() == {}
    status, error = await whoami_status(client, token)
    assert status == 401 and error["errcode"] == "M_UNKNOWN_TOKEN"
    assert error["soft_logout"] is False
    devices = await client.get("/_matrix/client/v3/devices", headers=auth_header(other))
    assert len(devices.json()["devices"]) == 1  # the logged-out device is gone


async def test_logout_all(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    other = (await login(client, "alice"))["access_token"]
    response = await client.post("/_matrix/client/v3/logout/all", headers=auth_header(token))
    assert response.status_code == 200
    for t in (token, other):
        assert (await whoami_status(client, t))[0] == 401
    await login(client, "alice")  # the account itself is fine


async def test_logout_needs_a_token(client: httpx.AsyncClient) -> None:
    for path in ("/_matrix/client/v3/logout", "/_matrix/client/v3/logout/all"):
        response = await client.post(path)
        assert response.status_code == 401
        assert response.json()["errcode"] == "M_MISSING_TOKEN"


# --- password -------------------------------------------------------------------------------


async def test_change_password(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    other = (await login(client, "alice"))["access_token"]
    response = await client.post(
        PASSWORD, headers=auth_header(token), json={"new_password": "a new password"}
    )
    assert response.status_code == 401
    challenge = response.json()
    assert challenge["flows"] == [{"stages": ["m.login.password"]}]
    assert "errcode" not in challenge
    assert_response_matches("POST", PASSWORD, 401, challenge)
    session = challenge["session"]

    response = await client.post(
        PASSWORD,
        headers=auth_header(token),
        json={
            "new_password": "a new password",
            "auth": password_auth(password="wrong", session=session),
        },
    )
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_FORBIDDEN"
    assert response.json()["session"] == session
    assert_response_matches("POST", PASSWORD, 401, response.json())

    response = await client.post(
        PASSWORD,
        headers=auth_header(token),
        json={"new_password": "a new password", "auth": password_auth(session=session)},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {}
    assert (await whoami_status(client, token))[0] == 200  # the requesting device stays
    assert (await whoami_status(client, other))[0] == 401  # logout_devices defaults to true
    wrong = await client.post(LOGIN, json=_password_login("alice", DEFAULT_PASSWORD))
    assert wrong.status_code == 403
    await login(client, "alice", "a new password")


async def test_change_password_keeping_devices(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    other = (await login(client, "alice"))["access_token"]
    response = await client.post(
        PASSWORD,
        headers=auth_header(token),
        json={"new_password": "a new password", "logout_devices": False, "auth": password_auth()},
    )
    assert response.status_code == 200, response.text
    assert (await whoami_status(client, other))[0] == 200


async def test_change_password_without_token(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    response = await client.post(
        PASSWORD, json={"new_password": "a new password", "auth": password_auth()}
    )
    assert response.status_code == 200, response.text
    assert (await whoami_status(client, token))[0] == 401  # every device logged out
    await login(client, "alice", "a new password")


async def test_change_password_of_another_user(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    await register(client, "bob")
    response = await client.post(
        PASSWORD,
        headers=auth_header(token),
        json={"new_password": "a new password", "auth": password_auth("bob")},
    )
    # Bob's right password on alice's token: refused outright, no new challenge.
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"
    assert "flows" not in response.json()


async def test_password_session_belongs_to_its_user(client: httpx.AsyncClient) -> None:
    _, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    response = await client.post(
        PASSWORD, headers=auth_header(alice), json={"new_password": "a new password"}
    )
    session = response.json()["session"]
    response = await client.post(
        PASSWORD,
        headers=auth_header(bob),
        json={"new_password": "a new password", "auth": password_auth("bob", session=session)},
    )
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"


async def test_change_password_bad_input(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    new = "a new password"
    await assert_errors(
        client,
        "POST",
        PASSWORD,
        headers=auth_header(token),
        cases=[
            ({"new_password": "short", "auth": password_auth()}, 400, "M_WEAK_PASSWORD"),
            ({"auth": password_auth()}, 400, "M_MISSING_PARAM"),
            ({"new_password": 12345678}, 400, "M_BAD_JSON"),
            ({"new_password": new, "logout_devices": "no"}, 400, "M_BAD_JSON"),
            ({"new_password": new, "auth": []}, 400, "M_BAD_JSON"),
            (
                {
                    "new_password": new,
                    "auth": {
                        "type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": "alice"},
                    },
                },
                400,
                "M_MISSING_PARAM",
            ),
            (
                {"new_password": new, "auth": {"type": "m.login.password", "password": "x"}},
                400,
                "M_MISSING_PARAM",
            ),
            (
                {
                    "new_password": new,
                    "auth": {"type": "m.login.password", "password": 1, "user": "alice"},
                },
                400,
                "M_BAD_JSON",
            ),
            (
                {
                    "new_password": new,
                    "auth": {"type": "m.login.password", "password": "x", "identifier": "alice"},
                },
                400,
                "M_BAD_JSON",
            ),
            (b"new_password=x", 400, "M_NOT_JSON"),
        ],
    )


async def test_change_password_bad_token(client: httpx.AsyncClient) -> None:
    response = await client.post(
        PASSWORD, headers=auth_header("mat_nope"), json={"new_password": "a new password"}
    )
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_UNKNOWN_TOKEN"


# --- deactivation ---------------------------------------------------------------------------


async def test_deactivate(
    client: httpx.AsyncClient, hs: Homeserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    deactivated: list[UserID] = []
    leave_rooms = hs.memberships.deactivate_user

    async def deactivate_user(user_id: UserID) -> None:
        deactivated.append(user_id)
        await leave_rooms(user_id)

    monkeypatch.setattr(hs.memberships, "deactivate_user", deactivate_user)
    user_id, token = await register(client, "alice")
    other = (await login(client, "alice"))["access_token"]
    response = await client.post(DEACTIVATE, headers=auth_header(token), json={})
    assert response.status_code == 401
    assert_response_matches("POST", DEACTIVATE, 401, response.json())
    session = response.json()["session"]
    response = await client.post(
        DEACTIVATE, headers=auth_header(token), json={"auth": password_auth(session=session)}
    )
    assert response.status_code == 200, response.text
    assert_response_matches("POST", DEACTIVATE, 200, response.json())
    assert response.json() == {"id_server_unbind_result": "success"}
    assert deactivated == [user_id]
    for t in (token, other):
        status, error = await whoami_status(client, t)
        assert status == 401 and error["errcode"] == "M_UNKNOWN_TOKEN"
    # The user ID stays taken.
    response = await client.get(
        "/_matrix/client/v3/register/available", params={"username": "alice"}
    )
    assert response.json()["errcode"] == "M_USER_IN_USE"


async def test_deactivate_wrong_password(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    response = await client.post(
        DEACTIVATE,
        headers=auth_header(token),
        json={"auth": password_auth(password="wrong password")},
    )
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_FORBIDDEN"
    assert (await whoami_status(client, token))[0] == 200


async def test_deactivate_without_token(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    response = await client.post(DEACTIVATE, json={"auth": password_auth()})
    assert response.status_code == 200, response.text
    assert (await whoami_status(client, token))[0] == 401


async def test_deactivate_bad_input(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    await assert_errors(
        client,
        "POST",
        DEACTIVATE,
        headers=auth_header(token),
        cases=[
            (b"not json", 400, "M_NOT_JSON"),
            ({"auth": 1}, 400, "M_BAD_JSON"),
            ({"erase": "yes"}, 400, "M_BAD_JSON"),
        ],
    )
