"""POST /login/get_token (MSC3882) and m.login.token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from homeserver.core.clock import FakeClock
from tests.conftest import make_config
from tests.helpers import DEFAULT_PASSWORD, auth_header, checked, register, serve

GET_TOKEN = "/_matrix/client/v1/login/get_token"
LOGIN = "/_matrix/client/v3/login"


@pytest.fixture
async def enabled(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> AsyncIterator[httpx.AsyncClient]:
    auth = {
        "password_hash_memory_kib": 64,
        "password_hash_time_cost": 1,
        "login_via_existing_session": True,
    }
    async with serve(make_config(tmp_path, db_url, auth=auth), clock) as (_, client):
        yield client


def _token_login(token: object) -> dict[str, object]:
    return {"type": "m.login.token", "token": token}


async def test_off_by_default(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    r = await client.post(GET_TOKEN, headers=auth_header(token), json={})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_FORBIDDEN")
    caps = checked(await client.get("/_matrix/client/v3/capabilities", headers=auth_header(token)))
    assert caps["capabilities"]["m.get_login_token"] == {"enabled": False}
    flows = checked(await client.get(LOGIN))["flows"]
    assert "m.login.token" not in [f["type"] for f in flows]
    # Off: m.login.token is a login type this server does not offer.
    refused = await client.post(LOGIN, json=_token_login("made-up"))
    assert (refused.status_code, refused.json()["errcode"]) == (400, "M_UNKNOWN")


async def test_a_device_lets_another_sign_in(enabled: httpx.AsyncClient, clock: FakeClock) -> None:
    client = enabled
    user_id, token = await register(client, "alice")
    caps = checked(await client.get("/_matrix/client/v3/capabilities", headers=auth_header(token)))
    assert caps["capabilities"]["m.get_login_token"] == {"enabled": True}
    flows = checked(await client.get(LOGIN))["flows"]
    assert {"type": "m.login.token", "get_login_token": True} in flows
    # User-interactive authentication first: the password again.
    challenge = await client.post(GET_TOKEN, headers=auth_header(token), json={})
    assert challenge.status_code == 401
    session = challenge.json()["session"]
    assert challenge.json()["flows"] == [{"stages": ["m.login.password"]}]
    wrong = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": "not it",
        "session": session,
    }
    bad = await client.post(GET_TOKEN, headers=auth_header(token), json={"auth": wrong})
    assert (bad.status_code, bad.json()["errcode"]) == (401, "M_FORBIDDEN")
    auth = {**wrong, "password": DEFAULT_PASSWORD}
    minted = checked(await client.post(GET_TOKEN, headers=auth_header(token), json={"auth": auth}))
    assert minted["expires_in_ms"] == 120_000
    new = checked(await client.post(LOGIN, json=_token_login(minted["login_token"])))
    assert new["user_id"] == user_id and new["access_token"] != token
    # Once only.
    again = await client.post(LOGIN, json=_token_login(minted["login_token"]))
    assert (again.status_code, again.json()["errcode"]) == (403, "M_FORBIDDEN")
    # Not after it expires.
    challenge = await client.post(GET_TOKEN, headers=auth_header(token), json={})
    auth["session"] = challenge.json()["session"]
    late = checked(await client.post(GET_TOKEN, headers=auth_header(token), json={"auth": auth}))
    clock.advance(late["expires_in_ms"])
    expired = await client.post(LOGIN, json=_token_login(late["login_token"]))
    assert (expired.status_code, expired.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_bad_requests(enabled: httpx.AsyncClient) -> None:
    client = enabled
    _, token = await register(client, "alice")
    missing = await client.post(LOGIN, json={"type": "m.login.token"})
    assert (missing.status_code, missing.json()["errcode"]) == (400, "M_MISSING_PARAM")
    wrong_type = await client.post(LOGIN, json=_token_login(5))
    assert (wrong_type.status_code, wrong_type.json()["errcode"]) == (400, "M_BAD_JSON")
    anonymous = await client.post(GET_TOKEN, json={})
    assert (anonymous.status_code, anonymous.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    not_json = await client.post(GET_TOKEN, headers=auth_header(token), content=b"{")
    assert (not_json.status_code, not_json.json()["errcode"]) == (400, "M_NOT_JSON")
    bad_auth = await client.post(GET_TOKEN, headers=auth_header(token), json={"auth": "password"})
    assert (bad_auth.status_code, bad_auth.json()["errcode"]) == (400, "M_BAD_JSON")


async def test_without_reauthentication(tmp_path: Path, db_url: str) -> None:
    auth = {
        "password_hash_memory_kib": 64,
        "password_hash_time_cost": 1,
        "login_via_existing_session": True,
        "login_token_require_uia": False,
    }
    async with serve(make_config(tmp_path, db_url, auth=auth)) as (_, client):
        user_id, token = await register(client, "alice")
        minted = checked(await client.post(GET_TOKEN, headers=auth_header(token)))
        assert (
            checked(await client.post(LOGIN, json=_token_login(minted["login_token"])))["user_id"]
            == user_id
        )
