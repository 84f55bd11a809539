"""GET /voip/turnServer (TURN REST shared-secret credentials) and the support well-knowns."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import httpx
import pytest

from homeserver.core.clock import FakeClock
from homeserver.core.config import ConfigError
from tests.conftest import make_config
from tests.helpers import auth_header, checked, register, serve

TURN = "/_matrix/client/v3/voip/turnServer"
SUPPORT = "/.well-known/matrix/support"
SECRET = "coturn static-auth-secret"
URIS = ["turn:turn.test:3478?transport=udp", "turns:turn.test:5349?transport=tcp"]


async def test_turn_credentials_are_what_coturn_checks(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock(1_700_000_000_000)
    voip = {"turn_uris": URIS, "turn_shared_secret": SECRET, "turn_user_lifetime_ms": 3_600_000}
    async with serve(make_config(tmp_path, db_url, voip=voip), clock) as (_, client):
        user_id, token = await register(client, "alice")
        body = checked(await client.get(TURN, headers=auth_header(token)))
        assert body["uris"] == URIS
        assert body["ttl"] == 3600
        expiry, _, name = body["username"].partition(":")
        assert name == user_id
        assert int(expiry) == 1_700_000_000 + 3600
        # coturn (use-auth-secret): base64(HMAC-SHA1(secret, username)).
        mac = hmac.new(SECRET.encode(), body["username"].encode(), hashlib.sha1).digest()
        assert body["password"] == base64.b64encode(mac).decode()
        # The same path under r0, which older clients call.
        legacy = await client.get("/_matrix/client/r0/voip/turnServer", headers=auth_header(token))
        assert legacy.json()["uris"] == URIS


async def test_turn_needs_a_token_and_is_empty_unconfigured(client: httpx.AsyncClient) -> None:
    checked(await client.get(TURN), 401, "M_MISSING_TOKEN", documented=False)
    unknown = await client.get(TURN, headers=auth_header("nope"))
    checked(unknown, 401, "M_UNKNOWN_TOKEN", documented=False)
    _, token = await register(client, "alice")
    # No TURN server configured: an empty object, which clients read as "no TURN" (as Synapse).
    response = await client.get(TURN, headers=auth_header(token))
    assert (response.status_code, response.json()) == (200, {})
    checked(await client.post(TURN, headers=auth_header(token), json={}), 405, documented=False)


async def test_turn_without_a_secret_offers_nothing(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, voip={"turn_uris": URIS})
    async with serve(config) as (_, client):
        _, token = await register(client, "alice")
        assert (await client.get(TURN, headers=auth_header(token))).json() == {}


async def test_support_is_404_until_configured(client: httpx.AsyncClient) -> None:
    checked(await client.get(SUPPORT), 404, "M_NOT_FOUND", documented=False)
    policy = await client.get("/.well-known/matrix/policy_server")
    assert (policy.status_code, policy.json()["errcode"]) == (404, "M_NOT_FOUND")


async def test_support_contacts_and_page(tmp_path: Path, db_url: str) -> None:
    support = {
        "contacts": [
            {"role": "m.role.admin", "matrix_id": "@admin:test", "email_address": "a@test"},
            {"role": "m.role.security", "email_address": "security@test"},
        ],
        "support_page": "https://test/support",
    }
    async with serve(make_config(tmp_path, db_url, support=support)) as (_, client):
        body = checked(await client.get(SUPPORT))
        assert body == support
    page_only = {"support_page": "https://test/help"}
    async with serve(make_config(tmp_path, db_url, support=page_only)) as (_, client):
        assert checked(await client.get(SUPPORT)) == page_only


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_contact_needs_a_way_to_reach_it(tmp_path: Path, db_url: str) -> None:
    with pytest.raises((ConfigError, ValueError)):
        make_config(tmp_path, db_url, support={"contacts": [{"role": "m.role.admin"}]})
    with pytest.raises((ConfigError, ValueError)):
        make_config(tmp_path, db_url, voip={"turn_user_lifetime_ms": 5})
