"""org.matrix.login.jwt: a token signed by the operator's identity system signs in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from homeserver.core.clock import FakeClock
from homeserver.core.config import JwtLoginConfig
from homeserver.core.ids import UserID
from tests.conftest import make_config
from tests.helpers import auth_header, register, serve

LOGIN = "/_matrix/client/v3/login"
WHOAMI = "/_matrix/client/v3/account/whoami"
SECRET = "a shared secret of at least thirty-two bytes"
START_S = 1_700_000_000


def hs_token(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def jwt_body(token: str, **extra: Any) -> dict[str, Any]:
    return {"type": "org.matrix.login.jwt", "token": token, **extra}


def jwt_config(**overrides: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "secret": SECRET,
        "issuer": "https://idp.example",
        "audiences": ["matrix"],
        **overrides,
    }


def valid_claims(**overrides: Any) -> dict[str, Any]:
    return {
        "sub": "alice",
        "iss": "https://idp.example",
        "aud": "matrix",
        "exp": START_S + 60,
        **overrides,
    }


async def refused(client: httpx.AsyncClient, token: str, reason: str) -> None:
    response = await client.post(LOGIN, json=jwt_body(token))
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["errcode"] == "M_FORBIDDEN"
    assert reason in body["error"], body


async def test_flows_offer_jwt_only_when_enabled(tmp_path: Path, db_url: str) -> None:
    async with serve(make_config(tmp_path, db_url)) as (_, client):
        flows = (await client.get(LOGIN)).json()["flows"]
        assert {"type": "org.matrix.login.jwt"} not in flows
        # Not enabled: the login type is unknown.
        response = await client.post(LOGIN, json=jwt_body(hs_token(valid_claims())))
        assert (response.status_code, response.json()["errcode"]) == (400, "M_UNKNOWN")
    config = make_config(tmp_path, db_url, jwt_login=jwt_config())
    async with serve(config) as (_, client):
        flows = (await client.get(LOGIN)).json()["flows"]
        assert {"type": "org.matrix.login.jwt"} in flows
        assert {"type": "m.login.password"} in flows


async def test_first_login_creates_the_account_and_the_second_finds_it(
    tmp_path: Path, db_url: str
) -> None:
    config = make_config(tmp_path, db_url, jwt_login=jwt_config())
    async with serve(config, FakeClock(START_S * 1000)) as (_, client):
        token = hs_token(valid_claims(sub="Alice"))
        first = await client.post(LOGIN, json=jwt_body(token, device_id="PHONE"))
        assert first.status_code == 200, first.text
        assert first.json()["user_id"] == "@alice:test"
        assert first.json()["device_id"] == "PHONE"
        who = await client.get(WHOAMI, headers=auth_header(first.json()["access_token"]))
        assert who.json()["user_id"] == "@alice:test"
        second = await client.post(LOGIN, json=jwt_body(token))
        assert second.status_code == 200
        assert second.json()["user_id"] == "@alice:test"
        assert second.json()["device_id"] != "PHONE"
        # The account has no password: password login cannot reach it.
        response = await client.post(
            LOGIN,
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "",
            },
        )
        assert response.status_code == 403


async def test_refresh_tokens_are_given_when_asked(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, jwt_login=jwt_config())
    async with serve(config, FakeClock(START_S * 1000)) as (_, client):
        response = await client.post(
            LOGIN, json=jwt_body(hs_token(valid_claims()), refresh_token=True)
        )
        assert response.status_code == 200
        assert "refresh_token" in response.json()
        assert "expires_in_ms" in response.json()


async def test_bad_tokens_are_refused_with_a_reason(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, jwt_login=jwt_config())
    async with serve(config, FakeClock(START_S * 1000)) as (_, client):
        await refused(client, hs_token(valid_claims(exp=START_S - 1)), "expired")
        await refused(client, hs_token(valid_claims(exp=START_S)), "expired")
        await refused(client, hs_token(valid_claims(exp="soon")), "exp")
        await refused(client, hs_token(valid_claims(nbf=START_S + 30)), "not yet valid")
        await refused(client, hs_token(valid_claims(aud="someone-else")), "audience")
        await refused(client, hs_token(valid_claims(iss="https://evil.example")), "issuer")
        no_iss = valid_claims()
        del no_iss["iss"]
        await refused(client, hs_token(no_iss), "iss")
        no_aud = valid_claims()
        del no_aud["aud"]
        await refused(client, hs_token(no_aud), "aud")
        other_secret = "another secret that is long enough for HS256 use"
        await refused(client, hs_token(valid_claims(), secret=other_secret), "signature")
        await refused(client, hs_token(valid_claims(), SECRET * 2, "HS512"), "algorithm")
        unsigned = jwt.encode(valid_claims(), None, algorithm="none")
        await refused(client, unsigned, "algorithm")
        await refused(client, "not.a.jwt", "not a valid token")
        await refused(client, "\u00e4.\u00f6.\u00fc", "")
        await refused(client, "", "")
        no_sub = valid_claims()
        del no_sub["sub"]
        await refused(client, hs_token(no_sub), "'sub'")
        await refused(client, hs_token(valid_claims(sub=42)), "Subject must be a string")
        await refused(client, hs_token(valid_claims(sub="not a localpart!")), "localpart")
        await refused(client, hs_token(valid_claims(sub="a" * 300)), "too long")
        missing = await client.post(LOGIN, json={"type": "org.matrix.login.jwt"})
        assert (missing.status_code, missing.json()["errcode"]) == (403, "M_FORBIDDEN")
        wrong_type = await client.post(LOGIN, json={"type": "org.matrix.login.jwt", "token": 5})
        assert wrong_type.status_code == 400
        bad_device = await client.post(
            LOGIN, json=jwt_body(hs_token(valid_claims()), device_id="\n")
        )
        assert (bad_device.status_code, bad_device.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_leeway_allows_clock_skew(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, jwt_login=jwt_config(leeway_seconds=30))
    async with serve(config, FakeClock(START_S * 1000)) as (_, client):
        ok = await client.post(LOGIN, json=jwt_body(hs_token(valid_claims(exp=START_S - 10))))
        assert ok.status_code == 200
        await refused(client, hs_token(valid_claims(exp=START_S - 31)), "expired")


async def test_accounts_are_not_created_when_config_says_so(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, jwt_login=jwt_config(create_accounts=False))
    async with serve(config, FakeClock(START_S * 1000)) as (_, client):
        await refused(client, hs_token(valid_claims(sub="nobody")), "No account")
        await register(client, "bob")
        response = await client.post(LOGIN, json=jwt_body(hs_token(valid_claims(sub="bob"))))
        assert response.status_code == 200
        assert response.json()["user_id"] == "@bob:test"


async def test_deactivated_account_is_refused(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, jwt_login=jwt_config())
    async with serve(config, FakeClock(START_S * 1000)) as (hs, client):
        login = await client.post(LOGIN, json=jwt_body(hs_token(valid_claims(sub="carol"))))
        assert login.status_code == 200
        await hs.account_store.set_deactivated(UserID("@carol:test"))
        response = await client.post(LOGIN, json=jwt_body(hs_token(valid_claims(sub="carol"))))
        assert (response.status_code, response.json()["errcode"]) == (403, "M_USER_DEACTIVATED")


async def test_public_key_and_custom_subject_claim(tmp_path: Path, db_url: str) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    login_config = {
        "enabled": True,
        "public_key": pem,
        "algorithms": ["ES256"],
        "subject_claim": "preferred_username",
    }
    config = make_config(tmp_path, db_url, jwt_login=login_config)
    async with serve(config, FakeClock(START_S * 1000)) as (_, client):
        token = jwt.encode({"preferred_username": "dave", "sub": "x1"}, private, algorithm="ES256")
        response = await client.post(LOGIN, json=jwt_body(token))
        assert response.status_code == 200, response.text
        assert response.json()["user_id"] == "@dave:test"
        # Without configured audiences, a token meant for someone is not for us.
        aimed = jwt.encode({"preferred_username": "dave", "aud": "x"}, private, algorithm="ES256")
        await refused(client, aimed, "audience")
        # An HMAC token keyed with the public key text (algorithm confusion) is refused.
        confused = jwt.encode({"preferred_username": "dave"}, SECRET, algorithm="HS256")
        await refused(client, confused, "algorithm")
        other = ec.generate_private_key(ec.SECP256R1())
        forged = jwt.encode({"preferred_username": "dave"}, other, algorithm="ES256")
        await refused(client, forged, "signature")


async def test_password_login_can_be_turned_off(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path, db_url, jwt_login=jwt_config(), auth={"password_login_enabled": False}
    )
    async with serve(config, FakeClock(START_S * 1000)) as (hs, client):
        await hs.accounts.register_user_admin("erin", "a good password", admin=False)
        flows = (await client.get(LOGIN)).json()["flows"]
        assert {"type": "m.login.password"} not in flows
        response = await client.post(
            LOGIN,
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "erin"},
                "password": "a good password",
            },
        )
        assert (response.status_code, response.json()["errcode"]) == (400, "M_UNKNOWN")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"secret": None}, "exactly one"),
        ({"public_key": "x"}, "exactly one"),
        ({"algorithms": ["none"]}, "unsupported"),
        ({"algorithms": []}, "at least one"),
        ({"algorithms": ["HS256", "RS256"]}, "do not mix"),
        ({"algorithms": ["RS256"]}, "public_key"),
        ({"secret": "short"}, "32 bytes"),
        ({"secret": None, "public_key": "not pem", "algorithms": ["RS256"]}, "PEM"),
    ],
)
def test_config_is_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JwtLoginConfig(**jwt_config(**settings))
