"""POST /register (with UIA), /register/available and registration tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from homeserver.accounts.uia import SESSION_LIFETIME_MS, UiaResult
from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.errors import MatrixError
from homeserver.core.ids import UserID, is_valid_new_localpart
from tests.conftest import make_config
from tests.helpers import DEFAULT_PASSWORD, assert_errors, auth_header, login, register, serve
from tests.openapi_schema import assert_response_matches

REGISTER = "/_matrix/client/v3/register"
AVAILABLE = "/_matrix/client/v3/register/available"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"


def body(username: str | None = "alice", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"password": DEFAULT_PASSWORD, **extra}
    if username is not None:
        out["username"] = username
    return out


async def start(client: httpx.AsyncClient, data: dict[str, Any]) -> str:
    """The first round of UIA: a 401 with a session and no errcode."""
    response = await client.post(REGISTER, json=data)
    assert response.status_code == 401, response.text
    assert "errcode" not in response.json()
    return str(response.json()["session"])


async def test_dummy_flow_in_two_rounds(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, json=body())
    assert response.status_code == 401
    challenge = response.json()
    assert challenge["flows"] == [{"stages": ["m.login.dummy"]}]
    assert challenge["completed"] == []
    assert "errcode" not in challenge
    assert_response_matches("POST", REGISTER, 401, challenge)

    response = await client.post(
        REGISTER, json=body(auth={"type": "m.login.dummy", "session": challenge["session"]})
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert_response_matches("POST", REGISTER, 200, data)
    assert data["user_id"] == "@alice:test"
    assert data["device_id"]
    assert "refresh_token" not in data and "expires_in_ms" not in data
    whoami = await client.get(
        "/_matrix/client/v3/account/whoami", headers=auth_header(data["access_token"])
    )
    assert whoami.json() == {
        "user_id": "@alice:test",
        "device_id": data["device_id"],
        "is_guest": False,
    }


async def test_completed_session_registers_no_other_account(client: httpx.AsyncClient) -> None:
    session = await start(client, body())
    auth = {"type": "m.login.dummy", "session": session}
    assert (await client.post(REGISTER, json=body(auth=auth))).status_code == 200
    response = await client.post(REGISTER, json=body("bob", auth=auth))
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_UNKNOWN"
    assert (await client.get(f"{AVAILABLE}?username=bob")).json() == {"available": True}


@pytest.mark.parametrize("username", ["alice", None])
async def test_registration_is_idempotent(client: httpx.AsyncClient, username: str | None) -> None:
    # A client whose answer was lost sends the request again in the same session: the same
    # account, signed in again on a new device (as Synapse answers; SyTest checks it).
    session = await start(client, body(username))
    auth = {"type": "m.login.dummy", "session": session}
    first = await client.post(REGISTER, json=body(username, auth=auth))
    assert first.status_code == 200, first.text
    again = await client.post(REGISTER, json=body(username, auth=auth))
    assert again.status_code == 200, again.text
    assert again.json()["user_id"] == first.json()["user_id"]
    assert again.json()["access_token"] != first.json()["access_token"]
    assert_response_matches("POST", REGISTER, 200, again.json())
    for data in (first.json(), again.json()):
        whoami = await client.get(
            "/_matrix/client/v3/account/whoami", headers=auth_header(data["access_token"])
        )
        assert whoami.json()["user_id"] == first.json()["user_id"]


async def test_registration_remembers_parameters(client: httpx.AsyncClient) -> None:
    # The first request names everything; the one completing the session sends only auth.
    session = await start(
        client,
        body(
            "carol",
            password="übers3kr1t-lang",
            device_id="XYZZY",
            initial_device_display_name="display name",
        ),
    )
    response = await client.post(
        REGISTER, json={"auth": {"type": "m.login.dummy", "session": session}}
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert (data["user_id"], data["device_id"]) == ("@carol:test", "XYZZY")
    device = await client.get(
        "/_matrix/client/v3/devices/XYZZY", headers=auth_header(data["access_token"])
    )
    assert device.json()["display_name"] == "display name"
    login_data = await login(client, "carol", password="übers3kr1t-lang")
    assert login_data["user_id"] == "@carol:test"


async def test_inhibit_login_is_remembered(client: httpx.AsyncClient) -> None:
    session = await start(client, body("erin", inhibit_login=True))
    response = await client.post(
        REGISTER, json={"auth": {"type": "m.login.dummy", "session": session}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == "@erin:test"
    assert "access_token" not in response.json() and "device_id" not in response.json()


async def test_remembered_parameters_stay_with_their_session(client: httpx.AsyncClient) -> None:
    # Parameters remembered in one session are not another session's.
    await start(client, body("dave"))
    other = await start(client, {})
    response = await client.post(
        REGISTER, json={"auth": {"type": "m.login.dummy", "session": other}}
    )
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_MISSING_PARAM"
    # An unknown session remembers nothing.
    response = await client.post(
        REGISTER, json={"auth": {"type": "m.login.dummy", "session": "nonexistent"}}
    )
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_MISSING_PARAM"


async def test_helper_registers(client: httpx.AsyncClient) -> None:
    user_id, token = await register(client, "carol")
    assert user_id == "@carol:test"
    assert token


async def test_username_is_lowercased(client: httpx.AsyncClient) -> None:
    user_id, _ = await register(client, "Dave")
    assert user_id == "@dave:test"


async def test_generated_localpart(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, json=body(None, auth={"type": "m.login.dummy"}))
    assert response.status_code == 200, response.text
    user_id = UserID.parse(response.json()["user_id"])
    assert is_valid_new_localpart(user_id.localpart)


async def test_device_id_and_display_name(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER,
        json=body(
            auth={"type": "m.login.dummy"},
            device_id="MYDEVICE",
            initial_device_display_name="Jungle Phone",
        ),
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["device_id"] == "MYDEVICE"
    devices = await client.get(
        "/_matrix/client/v3/devices", headers=auth_header(data["access_token"])
    )
    assert [(d["device_id"], d.get("display_name")) for d in devices.json()["devices"]] == [
        ("MYDEVICE", "Jungle Phone")
    ]


async def test_inhibit_login(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER, json=body(auth={"type": "m.login.dummy"}, inhibit_login=True)
    )
    assert response.status_code == 200
    data = response.json()
    assert_response_matches("POST", REGISTER, 200, data)
    assert data["user_id"] == "@alice:test"
    assert "access_token" not in data and "device_id" not in data
    await login(client, "alice")  # the account exists


async def test_refresh_token(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER, json=body(auth={"type": "m.login.dummy"}, refresh_token=True)
    )
    assert response.status_code == 200
    data = response.json()
    assert_response_matches("POST", REGISTER, 200, data)
    assert data["refresh_token"] and data["expires_in_ms"] > 0
    refreshed = await client.post(
        "/_matrix/client/v3/refresh", json={"refresh_token": data["refresh_token"]}
    )
    assert refreshed.status_code == 200


async def test_user_in_use_before_uia(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    for name in ("alice", "ALICE"):
        response = await client.post(REGISTER, json=body(name))  # no auth: checked first
        assert response.status_code == 400
        assert response.json()["errcode"] == "M_USER_IN_USE"


async def test_user_taken_during_uia(client: httpx.AsyncClient) -> None:
    session = await start(client, body())
    await register(client, "alice")
    response = await client.post(
        REGISTER,
        json={
            "password": DEFAULT_PASSWORD,
            "auth": {"type": "m.login.dummy", "session": session},
            "username": "alice",
        },
    )
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_USER_IN_USE"


async def test_bad_input(client: httpx.AsyncClient) -> None:
    dummy = {"type": "m.login.dummy"}
    await assert_errors(
        client,
        "POST",
        REGISTER,
        [
            *(
                (body(name, auth=dummy), 400, "M_INVALID_USERNAME")
                for name in ("al ice", "alice:test", "émile", "a" * 250, "", "@alice")
            ),
            (body(password="short"), 400, "M_WEAK_PASSWORD"),
            (body(password="x" * 600), 400, "M_INVALID_PARAM"),
            ({"username": "alice", "auth": dummy}, 400, "M_MISSING_PARAM"),
            (body(device_id="", auth=dummy), 400, "M_INVALID_PARAM"),
            (b"{not json", 400, "M_NOT_JSON"),
            ([], 400, "M_BAD_JSON"),
            ("alice", 400, "M_BAD_JSON"),
            *(
                ({**body(), **extra}, 400, "M_BAD_JSON")
                for extra in (
                    {"username": 1},
                    {"password": 12345678},
                    {"inhibit_login": "yes"},
                    {"refresh_token": 1},
                    {"device_id": ["x"]},
                    {"auth": "m.login.dummy"},
                    {"auth": {"type": 1}},
                    {"auth": {"type": "m.login.dummy", "session": 5}},
                )
            ),
            ({**body(), "auth": {"type": "m.login.dummy", "session": "nope"}}, 400, "M_UNKNOWN"),
        ],
    )
    await assert_errors(
        client, "POST", REGISTER + "?kind=guest", [({}, 403, "M_GUEST_ACCESS_FORBIDDEN")]
    )
    await assert_errors(
        client, "POST", REGISTER + "?kind=robot", [(body(), 400, "M_INVALID_PARAM")]
    )


async def test_first_round_needs_no_password(client: httpx.AsyncClient) -> None:
    # Element asks for the flows with an almost empty body.
    response = await client.post(REGISTER, json={})
    assert response.status_code == 401
    assert response.json()["flows"]


async def test_expired_session(client: httpx.AsyncClient, clock: FakeClock) -> None:
    session = await start(client, body())
    clock.advance(SESSION_LIFETIME_MS + 1)
    response = await client.post(
        REGISTER, json=body(auth={"type": "m.login.dummy", "session": session})
    )
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_UNKNOWN"


async def test_unexpected_stage(client: httpx.AsyncClient) -> None:
    session = await start(client, body())
    response = await client.post(
        REGISTER,
        json=body(
            auth={
                "type": "m.login.password",
                "session": session,
                "password": "x",
                "identifier": {"type": "m.id.user", "user": "alice"},
            }
        ),
    )
    assert response.status_code == 401
    data = response.json()
    assert data["errcode"] == "M_FORBIDDEN"
    assert data["session"] == session and data["flows"] == [{"stages": ["m.login.dummy"]}]


async def test_session_bound_to_its_request(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    other = await client.post(
        "/_matrix/client/v3/account/password",
        headers=auth_header(token),
        json={"new_password": "another password"},
    )
    assert other.status_code == 401
    response = await client.post(
        REGISTER,
        json=body("bob", auth={"type": "m.login.dummy", "session": other.json()["session"]}),
    )
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"


# --- register/available ---------------------------------------------------------------------


async def test_available(client: httpx.AsyncClient) -> None:
    response = await client.get(AVAILABLE, params={"username": "alice"})
    assert response.status_code == 200
    assert response.json() == {"available": True}
    assert_response_matches("GET", AVAILABLE + "?username=alice", 200, response.json())
    await register(client, "alice")
    response = await client.get(AVAILABLE, params={"username": "Alice"})
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_USER_IN_USE"


async def test_available_invalid_and_missing(client: httpx.AsyncClient) -> None:
    response = await client.get(AVAILABLE, params={"username": "not valid"})
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_INVALID_USERNAME"
    response = await client.get(AVAILABLE)
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_MISSING_PARAM"


# --- closed registration and registration tokens --------------------------------------------


async def test_closed_without_tokens(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, registration={"enabled": False})
    async with serve(config) as (_, client):
        response = await client.post(REGISTER, json=body(auth={"type": "m.login.dummy"}))
        assert response.status_code == 403
        assert response.json()["errcode"] == "M_FORBIDDEN"
        response = await client.get(VALIDITY, params={"token": "abc"})
        assert response.status_code == 403
        assert response.json()["errcode"] == "M_FORBIDDEN"


async def test_static_token(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, registration={"enabled": False, "tokens": ["letmein"]})
    async with serve(config) as (_, client):
        response = await client.post(REGISTER, json=body())
        assert response.status_code == 401
        assert response.json()["flows"] == [{"stages": ["m.login.registration_token"]}]
        session = response.json()["session"]
        # The dummy stage is not offered when registration is closed.
        response = await client.post(
            REGISTER, json=body(auth={"type": "m.login.dummy", "session": session})
        )
        assert response.status_code == 401
        assert response.json()["errcode"] == "M_FORBIDDEN"
        response = await client.post(
            REGISTER,
            json=body(
                auth={"type": "m.login.registration_token", "token": "wrong", "session": session}
            ),
        )
        assert response.status_code == 401
        assert response.json()["errcode"] == "M_UNAUTHORIZED"
        assert response.json()["session"] == session
        assert_response_matches("POST", REGISTER, 401, response.json())
        response = await client.post(
            REGISTER,
            json=body(
                auth={"type": "m.login.registration_token", "token": "letmein", "session": session}
            ),
        )
        assert response.status_code == 200, response.text

        for token, valid in (("letmein", True), ("wrong", False)):
            response = await client.get(VALIDITY, params={"token": token})
            assert response.status_code == 200
            assert response.json() == {"valid": valid}
            assert_response_matches("GET", VALIDITY, 200, response.json())


async def test_token_stage_errors(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, registration={"enabled": False, "tokens": ["letmein"]})
    async with serve(config) as (_, client):
        response = await client.post(
            REGISTER, json=body(auth={"type": "m.login.registration_token"})
        )
        assert response.status_code == 400
        assert response.json()["errcode"] == "M_MISSING_PARAM"
        response = await client.post(
            REGISTER, json=body(auth={"type": "m.login.registration_token", "token": 5})
        )
        assert response.status_code == 400
        assert response.json()["errcode"] == "M_BAD_JSON"
        response = await client.get(VALIDITY)
        assert response.status_code == 400
        assert response.json()["errcode"] == "M_MISSING_PARAM"


async def test_require_token_while_open(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path,
        db_url,
        registration={"enabled": True, "require_token": True, "tokens": ["letmein"]},
    )
    async with serve(config) as (_, client):
        response = await client.post(REGISTER, json=body())
        assert response.json()["flows"] == [{"stages": ["m.login.registration_token"]}]


async def _register_with_token(
    client: httpx.AsyncClient, username: str, token: str
) -> httpx.Response:
    return await client.post(
        REGISTER, json=body(username, auth={"type": "m.login.registration_token", "token": token})
    )


async def test_database_token_uses(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, registration={"enabled": False})
    clock = FakeClock()
    async with serve(config, clock) as (hs, client):
        await hs.registration_tokens.create_token("once", uses_allowed=1, expiry_time=None)
        assert (await client.get(VALIDITY, params={"token": "once"})).json() == {"valid": True}
        response = await _register_with_token(client, "alice", "once")
        assert response.status_code == 200, response.text
        token = await hs.registration_tokens.get_token("once")
        assert token is not None and (token.pending, token.completed) == (0, 1)
        # With its only token used up, registration is closed again.
        response = await _register_with_token(client, "bob", "once")
        assert response.status_code == 403
        assert response.json()["errcode"] == "M_FORBIDDEN"
        await hs.registration_tokens.create_token("other", uses_allowed=None, expiry_time=None)
        response = await _register_with_token(client, "bob", "once")
        assert response.status_code == 401
        assert response.json()["errcode"] == "M_UNAUTHORIZED"
        assert (await client.get(VALIDITY, params={"token": "once"})).json() == {"valid": False}


async def test_pending_use_is_released_when_the_session_expires(
    tmp_path: Path, db_url: str
) -> None:
    config = make_config(tmp_path, db_url, registration={"enabled": False})
    clock = FakeClock()
    async with serve(config, clock) as (hs, client):
        await hs.registration_tokens.create_token("once", uses_allowed=1, expiry_time=None)
        await hs.registration_tokens.create_token("spare", uses_allowed=None, expiry_time=None)
        # A session completes the token stage (its registration then fails or is abandoned).
        await reserve(hs, "once")
        token = await hs.registration_tokens.get_token("once")
        assert token is not None and token.pending == 1
        # The reserved use is not for anyone else...
        response = await _register_with_token(client, "dave", "once")
        assert response.status_code == 401
        # ...until carol's session expires unused.
        clock.advance(SESSION_LIFETIME_MS + 1)
        response = await _register_with_token(client, "dave", "once")
        assert response.status_code == 200, response.text
        token = await hs.registration_tokens.get_token("once")
        assert token is not None and (token.pending, token.completed) == (0, 1)


async def test_reserved_use_serves_a_retry(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, registration={"enabled": False})
    async with serve(config) as (hs, client):
        await hs.registration_tokens.create_token("once", uses_allowed=1, expiry_time=None)
        session = await reserve(hs, "once")
        # The stage is done in this session: the use it reserved is the one counted.
        response = await client.post(
            REGISTER,
            json=body("carol2", auth={"type": "m.login.registration_token", "session": session}),
        )
        assert response.status_code == 200, response.text
        token = await hs.registration_tokens.get_token("once")
        assert token is not None and (token.pending, token.completed) == (0, 1)


async def reserve(hs: Homeserver, token: str) -> str:
    """Complete the token stage of a registration session (as if the request then failed)."""
    result = await hs.uia.authenticate(
        {"type": "m.login.registration_token", "token": token},
        [["m.login.registration_token"]],
        f"POST {REGISTER}",
    )
    assert isinstance(result, UiaResult)
    return result.session_id


async def test_expired_database_token(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, registration={"enabled": False})
    clock = FakeClock()
    async with serve(config, clock) as (hs, client):
        await hs.registration_tokens.create_token(
            "soon", uses_allowed=None, expiry_time=clock.now_ms() + 1000
        )
        assert (await client.get(VALIDITY, params={"token": "soon"})).json() == {"valid": True}
        clock.advance(1000)
        assert (await client.get(VALIDITY, params={"token": "soon"})).json() == {"valid": False}
        response = await client.post(REGISTER, json=body())
        assert response.status_code == 403


# --- administration and rate limits ---------------------------------------------------------


async def test_register_user_admin(hs: Homeserver, client: httpx.AsyncClient) -> None:
    user_id = await hs.accounts.register_user_admin("Root", DEFAULT_PASSWORD, admin=True)
    assert user_id == "@root:test"
    token = (await login(client, "root"))["access_token"]
    requester = await hs.auth.get_requester(token)
    assert requester.is_admin
    with pytest.raises(MatrixError) as e:
        await hs.accounts.register_user_admin("root", DEFAULT_PASSWORD, admin=False)
    assert e.value.code == "M_USER_IN_USE"
    with pytest.raises(MatrixError) as e:
        await hs.accounts.register_user_admin("bad name", DEFAULT_PASSWORD, admin=False)
    assert e.value.code == "M_INVALID_USERNAME"
    with pytest.raises(MatrixError) as e:
        await hs.accounts.register_user_admin("weak", "x", admin=False)
    assert e.value.code == "M_WEAK_PASSWORD"


async def test_registration_rate_limit(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path,
        db_url,
        rate_limits={"enabled": True, "registration": {"per_second": 0.5, "burst": 2}},
    )
    clock = FakeClock()
    async with serve(config, clock) as (_, client):
        for _ in range(2):
            assert (await client.post(REGISTER, json=body())).status_code == 401
        response = await client.post(REGISTER, json=body())
        assert response.status_code == 429
        assert response.json()["errcode"] == "M_LIMIT_EXCEEDED"
        assert response.json()["retry_after_ms"] == 2000
        assert response.headers["retry-after"] == "2"
        clock.advance(2000)
        assert (await client.post(REGISTER, json=body())).status_code == 401
