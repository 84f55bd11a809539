"""The OAuth 2.0 API: metadata, client registration, the code grant with PKCE, refresh with
rotation, revocation; Authlib's OAuth client drives it where a client library would."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError as ClientOAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc6749.errors import MismatchingStateException

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.oauth.service import s256
from tests.conftest import make_config
from tests.helpers import DEFAULT_PASSWORD, auth_header, serve
from tests.openapi_schema import assert_response_matches

METADATA = "/_matrix/client/v1/auth_metadata"
WHOAMI = "/_matrix/client/v3/account/whoami"
API = "urn:matrix:client:api:*"
CLIENT = {
    "client_name": "Test client",
    "client_uri": "https://app.example",
    "redirect_uris": ["https://app.example/callback"],
    "grant_types": ["authorization_code", "refresh_token"],
    "response_types": ["code"],
    "token_endpoint_auth_method": "none",
}
REDIRECT = "https://app.example/callback"


def oauth_config(tmp_path: Path, db_url: str, **overrides: Any) -> Any:
    return make_config(tmp_path, db_url, oauth={"enabled": True}, **overrides)


async def register_client(client: httpx.AsyncClient, **overrides: Any) -> str:
    response = await client.post("/oauth2/register", json={**CLIENT, **overrides})
    assert response.status_code == 201, response.text
    client_id: str = response.json()["client_id"]
    return client_id


def hidden_fields(html: str) -> dict[str, str]:
    return {
        unescape(name): unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', html)
    }


async def sign_in(
    client: httpx.AsyncClient,
    url: str,
    *,
    username: str = "alice",
    password: str = DEFAULT_PASSWORD,
    action: str = "allow",
) -> httpx.Response:
    """Open the sign-in page at ``url`` and submit its form (the test client's host: the
    CSRF cookie goes back where it came from)."""
    parts = urlsplit(url)
    page = await client.get(f"{parts.path}?{parts.query}")
    assert page.status_code == 200, page.text
    form = hidden_fields(page.text)
    form.update(username=username, password=password, action=action)
    return await client.post("/oauth2/authorize", data=form)


def authlib_client(hs: Homeserver, client_id: str, scope: str) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=client_id,
        redirect_uri=REDIRECT,
        scope=scope,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
        revocation_endpoint_auth_method="none",
        transport=httpx.ASGITransport(app=hs.app),
        base_url="http://test",
    )


@pytest.fixture
async def server(tmp_path: Path, db_url: str) -> Any:
    clock = FakeClock()
    async with serve(oauth_config(tmp_path, db_url), clock) as (hs, client):
        await hs.accounts.register_user_admin("alice", DEFAULT_PASSWORD, admin=False)
        yield hs, client, clock


async def test_off_by_default(tmp_path: Path, db_url: str) -> None:
    async with serve(make_config(tmp_path, db_url)) as (_, client):
        response = await client.get(METADATA)
        assert (response.status_code, response.json()["errcode"]) == (404, "M_UNRECOGNIZED")
        response = await client.post("/oauth2/register", json=CLIENT)
        assert response.status_code == 404


async def test_metadata(server: Any) -> None:
    _, client, _ = server
    response = await client.get(METADATA)
    assert response.status_code == 200
    meta = response.json()
    base = meta["issuer"]
    assert base.endswith("/")
    assert meta["authorization_endpoint"] == f"{base}oauth2/authorize"
    assert meta["token_endpoint"] == f"{base}oauth2/token"
    assert meta["registration_endpoint"] == f"{base}oauth2/register"
    assert meta["revocation_endpoint"] == f"{base}oauth2/revoke"
    assert meta["response_types_supported"] == ["code"]
    assert set(meta["grant_types_supported"]) >= {"authorization_code", "refresh_token"}
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert set(meta["response_modes_supported"]) == {"query", "fragment"}
    assert_response_matches("GET", METADATA, 200, meta)


async def test_code_flow_refresh_and_revoke_with_authlib(server: Any) -> None:
    hs, client, _ = server
    client_id = await register_client(client)
    meta = (await client.get(METADATA)).json()
    async with authlib_client(hs, client_id, f"{API} urn:matrix:client:device:LAPTOP") as oauth:
        verifier = generate_token(48)
        url, state = oauth.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier
        )
        redirected = await sign_in(client, url)
        assert redirected.status_code == 303
        location = redirected.headers["location"]
        assert location.startswith(REDIRECT + "?")
        assert parse_qs(urlsplit(location).query)["state"] == [state]
        token = await oauth.fetch_token(
            meta["token_endpoint"], authorization_response=location, code_verifier=verifier
        )
        assert token["token_type"] == "Bearer"
        assert token["scope"] == f"{API} urn:matrix:client:device:LAPTOP"
        who = await client.get(WHOAMI, headers=auth_header(token["access_token"]))
        assert who.json() == {"user_id": "@alice:test", "device_id": "LAPTOP", "is_guest": False}
        # The whole client API takes the token.
        devices = await client.get(
            "/_matrix/client/v3/devices", headers=auth_header(token["access_token"])
        )
        assert [d["device_id"] for d in devices.json()["devices"]] == ["LAPTOP"]

        first_refresh = token["refresh_token"]
        refreshed = await oauth.refresh_token(meta["token_endpoint"])
        assert refreshed["refresh_token"] != first_refresh
        assert refreshed["access_token"] != token["access_token"]
        who = await client.get(WHOAMI, headers=auth_header(refreshed["access_token"]))
        assert who.json()["device_id"] == "LAPTOP"

        revoked = await oauth.revoke_token(
            meta["revocation_endpoint"], token=refreshed["access_token"]
        )
        assert revoked.status_code == 200
        who = await client.get(WHOAMI, headers=auth_header(refreshed["access_token"]))
        assert who.status_code == 401
        with pytest.raises(ClientOAuthError) as refused:
            await oauth.refresh_token(meta["token_endpoint"])
        assert refused.value.error == "invalid_grant"


async def test_forged_state_is_caught_by_the_client(server: Any) -> None:
    hs, client, _ = server
    client_id = await register_client(client)
    async with authlib_client(hs, client_id, API) as oauth:
        verifier = generate_token(48)
        url, state = oauth.create_authorization_url("/oauth2/authorize", code_verifier=verifier)
        location = (await sign_in(client, url)).headers["location"]
        forged = location.replace("state=", "state=forged")
        with pytest.raises(MismatchingStateException):
            await oauth.fetch_token(
                "/oauth2/token",
                authorization_response=forged,
                code_verifier=verifier,
                state=state,
            )


async def authorize_raw(
    client: httpx.AsyncClient, client_id: str, verifier: str, **params: str
) -> httpx.Response:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": API,
        "state": "s1",
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        **params,
    }
    return await client.get("/oauth2/authorize", params=query)


async def code_for(client: httpx.AsyncClient, client_id: str, verifier: str) -> str:
    page = await authorize_raw(client, client_id, verifier)
    form = hidden_fields(page.text)
    form.update(username="alice", password=DEFAULT_PASSWORD, action="allow")
    response = await client.post("/oauth2/authorize", data=form)
    assert response.status_code == 303, response.text
    return parse_qs(urlsplit(response.headers["location"]).query)["code"][0]


async def exchange(
    client: httpx.AsyncClient, client_id: str, code: str, verifier: str | None, **extra: str
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        **extra,
    }
    if verifier is not None:
        form["code_verifier"] = verifier
    return await client.post("/oauth2/token", data=form)


def oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error, response.json()


async def test_code_checks(server: Any) -> None:
    _, client, clock = server
    client_id = await register_client(client)
    verifier = generate_token(48)

    # A reused code: the second exchange fails.
    code = await code_for(client, client_id, verifier)
    assert (await exchange(client, client_id, code, verifier)).status_code == 200
    oauth_error(await exchange(client, client_id, code, verifier), 400, "invalid_grant")

    # A changed redirect URI at the token endpoint; the code is spent by the attempt.
    code = await code_for(client, client_id, verifier)
    changed = await exchange(
        client, client_id, code, verifier, redirect_uri="https://app.example/other"
    )
    oauth_error(changed, 400, "invalid_grant")
    oauth_error(await exchange(client, client_id, code, verifier), 400, "invalid_grant")

    # A missing verifier, a wrong one, one that is not a verifier at all.
    code = await code_for(client, client_id, verifier)
    oauth_error(await exchange(client, client_id, code, None), 400, "invalid_request")
    wrong = await exchange(client, client_id, code, generate_token(48))
    oauth_error(wrong, 400, "invalid_grant")
    code = await code_for(client, client_id, verifier)
    oauth_error(await exchange(client, client_id, code, "short"), 400, "invalid_grant")

    # Another client's code.
    other = await register_client(client)
    code = await code_for(client, client_id, verifier)
    oauth_error(await exchange(client, other, code, verifier), 400, "invalid_grant")

    # An expired code.
    code = await code_for(client, client_id, verifier)
    clock.advance(61_000)
    oauth_error(await exchange(client, client_id, code, verifier), 400, "invalid_grant")

    # Unknown client, unknown grant type, wrong content type, a parameter twice.
    oauth_error(await exchange(client, "nope", "x", verifier), 401, "invalid_client")
    response = await client.post("/oauth2/token", data={"grant_type": "password"})
    oauth_error(response, 400, "unsupported_grant_type")
    response = await client.post("/oauth2/token", json={"grant_type": "authorization_code"})
    oauth_error(response, 400, "invalid_request")
    response = await client.post(
        "/oauth2/token",
        content=b"grant_type=refresh_token&grant_type=authorization_code",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    oauth_error(response, 400, "invalid_request")


async def test_refresh_token_reuse_ends_the_session(server: Any) -> None:
    _, client, _ = server
    client_id = await register_client(client)
    verifier = generate_token(48)
    code = await code_for(client, client_id, verifier)
    first = (await exchange(client, client_id, code, verifier)).json()
    form = {"grant_type": "refresh_token", "client_id": client_id}
    second = await client.post(
        "/oauth2/token", data={**form, "refresh_token": first["refresh_token"]}
    )
    assert second.status_code == 200
    # The old refresh token again: someone copied it. The whole session ends.
    reused = await client.post(
        "/oauth2/token", data={**form, "refresh_token": first["refresh_token"]}
    )
    oauth_error(reused, 400, "invalid_grant")
    who = await client.get(WHOAMI, headers=auth_header(second.json()["access_token"]))
    assert who.status_code == 401
    latest = await client.post(
        "/oauth2/token", data={**form, "refresh_token": second.json()["refresh_token"]}
    )
    oauth_error(latest, 400, "invalid_grant")
    missing = await client.post("/oauth2/token", data=form)
    oauth_error(missing, 400, "invalid_request")


async def test_refresh_tokens_are_bound_to_their_client(server: Any) -> None:
    _, client, _ = server
    owner = await register_client(client)
    other = await register_client(client)
    verifier = generate_token(48)
    tokens = (
        await exchange(client, owner, await code_for(client, owner, verifier), verifier)
    ).json()
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}

    # Another client presenting the token is refused, and the token stays good for its own.
    stolen = await client.post("/oauth2/token", data={**refresh, "client_id": other})
    oauth_error(stolen, 400, "invalid_grant")
    assert "another client" in stolen.json()["error_description"]
    # The same for revocation (RFC 7009 section 2.1), by access or refresh token.
    for token in (tokens["access_token"], tokens["refresh_token"]):
        refused = await client.post("/oauth2/revoke", data={"token": token, "client_id": other})
        oauth_error(refused, 400, "unauthorized_client")
    who = await client.get(WHOAMI, headers=auth_header(tokens["access_token"]))
    assert who.status_code == 200
    # The legacy /refresh does not rotate an OAuth session either.
    legacy = await client.post(
        "/_matrix/client/v3/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert (legacy.status_code, legacy.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert legacy.json()["soft_logout"] is False
    renewed = await client.post("/oauth2/token", data={**refresh, "client_id": owner})
    assert renewed.status_code == 200, renewed.text
    # The rotated token is bound as well.
    next_refresh = {**refresh, "refresh_token": renewed.json()["refresh_token"]}
    oauth_error(
        await client.post("/oauth2/token", data={**next_refresh, "client_id": other}),
        400,
        "invalid_grant",
    )
    assert (
        await client.post("/oauth2/token", data={**next_refresh, "client_id": owner})
    ).status_code == 200

    # A session of /login is not any OAuth client's; it refreshes through /refresh.
    login = await client.post(
        "/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": DEFAULT_PASSWORD,
            "refresh_token": True,
        },
    )
    assert login.status_code == 200, login.text
    plain = login.json()["refresh_token"]
    taken = await client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": plain, "client_id": owner},
    )
    oauth_error(taken, 400, "invalid_grant")
    refused = await client.post("/oauth2/revoke", data={"token": plain, "client_id": owner})
    oauth_error(refused, 400, "unauthorized_client")
    legacy = await client.post("/_matrix/client/v3/refresh", json={"refresh_token": plain})
    assert legacy.status_code == 200, legacy.text

    # A client that did not register the refresh grant may not use it.
    no_refresh = await register_client(client, grant_types=["authorization_code"])
    oauth_error(
        await client.post("/oauth2/token", data={**refresh, "client_id": no_refresh}),
        400,
        "unauthorized_client",
    )


async def test_revoke(server: Any) -> None:
    _, client, _ = server
    client_id = await register_client(client)
    verifier = generate_token(48)
    code = await code_for(client, client_id, verifier)
    tokens = (await exchange(client, client_id, code, verifier)).json()
    unknown = await client.post("/oauth2/revoke", data={"token": "nothing", "client_id": client_id})
    assert unknown.status_code == 200  # RFC 7009: an unknown token is no error
    revoked = await client.post(
        "/oauth2/revoke",
        data={
            "token": tokens["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": client_id,
        },
    )
    assert revoked.status_code == 200
    who = await client.get(WHOAMI, headers=auth_header(tokens["access_token"]))
    assert who.status_code == 401
    oauth_error(
        await client.post("/oauth2/revoke", data={"client_id": client_id}), 400, "invalid_request"
    )
    oauth_error(
        await client.post("/oauth2/revoke", data={"token": "x", "client_id": "nope"}),
        401,
        "invalid_client",
    )


async def test_authorization_request_checks(server: Any) -> None:
    _, client, _ = server
    client_id = await register_client(client)
    verifier = generate_token(48)

    # Never redirected: an unknown client, a redirect URI the client did not register.
    page = await authorize_raw(client, "nope", verifier)
    assert page.status_code == 400 and "Unknown client" in page.text
    page = await authorize_raw(client, client_id, verifier, redirect_uri="https://evil.example/")
    assert page.status_code == 400 and "location" not in page.headers
    page = await authorize_raw(
        client, client_id, verifier, redirect_uri="https://app.example/callback/"
    )
    assert page.status_code == 400

    async def redirected_error(**params: str) -> str:
        response = await authorize_raw(client, client_id, verifier, **params)
        assert response.status_code == 303, response.text
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["state"] == ["s1"]
        return query["error"][0]

    assert await redirected_error(response_type="token") == "unsupported_response_type"
    assert await redirected_error(code_challenge_method="plain") == "invalid_request"
    assert await redirected_error(code_challenge="") == "invalid_request"
    assert await redirected_error(scope="openid") == "invalid_scope"
    assert await redirected_error(scope=f"{API} urn:matrix:client:device:") == "invalid_scope"
    two = f"{API} urn:matrix:client:device:A urn:matrix:client:device:B"
    assert await redirected_error(scope=two) == "invalid_scope"
    assert await redirected_error(prompt="none") == "invalid_request"

    # MSC2967's unstable scope names are understood.
    unstable = (
        "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:OLD"
    )
    page = await authorize_raw(client, client_id, verifier, scope=unstable)
    assert page.status_code == 200
    form = {**hidden_fields(page.text), "username": "alice", "password": DEFAULT_PASSWORD}
    granted = await client.post("/oauth2/authorize", data=form)
    code = parse_qs(urlsplit(granted.headers["location"]).query)["code"][0]
    tokens = (await exchange(client, client_id, code, verifier)).json()
    assert tokens["scope"] == f"{API} urn:matrix:client:device:OLD"

    # response_mode=fragment puts the answer in the fragment.
    response = await authorize_raw(
        client, client_id, verifier, response_mode="fragment", response_type="x"
    )
    assert "#error=unsupported_response_type" in response.headers["location"]


async def test_sign_in_page(server: Any) -> None:
    _, client, _ = server
    client_id = await register_client(client)
    verifier = generate_token(48)
    page = await authorize_raw(client, client_id, verifier)
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "form-action 'self' https://app.example" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert '<label for="username">' in page.text and '<label for="password">' in page.text
    assert "Test client" in page.text
    assert "httponly" in page.headers["set-cookie"].lower()
    assert "samesite=lax" in page.headers["set-cookie"].lower()
    form = hidden_fields(page.text)

    # A wrong password: the page again, with the error, no redirect.
    wrong = await client.post(
        "/oauth2/authorize", data={**form, "username": "alice", "password": "nope"}
    )
    assert wrong.status_code == 403 and 'role="alert"' in wrong.text
    # A forged or missing CSRF token.
    forged = await client.post(
        "/oauth2/authorize",
        data={**form, "csrf": "forged", "username": "alice", "password": DEFAULT_PASSWORD},
    )
    assert forged.status_code == 403 and "location" not in forged.headers
    client.cookies.clear()
    no_cookie = await client.post(
        "/oauth2/authorize", data={**form, "username": "alice", "password": DEFAULT_PASSWORD}
    )
    assert no_cookie.status_code == 403
    # Deny: access_denied at the redirect URI, with the state.
    page = await authorize_raw(client, client_id, verifier)
    denied = await client.post(
        "/oauth2/authorize", data={**hidden_fields(page.text), "action": "deny"}
    )
    query = parse_qs(urlsplit(denied.headers["location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["s1"]
    # Content the client chose is escaped.
    evil = await register_client(client, client_name="<script>x</script>")
    page = await authorize_raw(client, evil, verifier)
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text


async def test_sign_in_brute_force_limit(tmp_path: Path, db_url: str) -> None:
    config = oauth_config(
        tmp_path, db_url, rate_limits={"enabled": True, "login": {"per_second": 0.1, "burst": 3}}
    )
    async with serve(config, FakeClock()) as (hs, client):
        await hs.accounts.register_user_admin("alice", DEFAULT_PASSWORD, admin=False)
        client_id = await register_client(client)
        page = await authorize_raw(client, client_id, generate_token(48))
        form = {**hidden_fields(page.text), "username": "alice", "password": "wrong"}
        statuses = [
            (await client.post("/oauth2/authorize", data=form)).status_code for _ in range(3)
        ]
        assert statuses == [403, 403, 403]
        limited = await client.post(
            "/oauth2/authorize", data={**form, "password": DEFAULT_PASSWORD}
        )
        assert limited.status_code == 429 and "Too many attempts" in limited.text


async def test_loopback_redirect_takes_any_port(server: Any) -> None:
    _, client, _ = server
    client_id = await register_client(
        client, application_type="native", redirect_uris=["http://127.0.0.1/cb"]
    )
    verifier = generate_token(48)
    page = await authorize_raw(
        client, client_id, verifier, redirect_uri="http://127.0.0.1:53127/cb"
    )
    form = {**hidden_fields(page.text), "username": "alice", "password": DEFAULT_PASSWORD}
    response = await client.post("/oauth2/authorize", data=form)
    assert response.headers["location"].startswith("http://127.0.0.1:53127/cb?code=")
    page = await authorize_raw(client, client_id, verifier, redirect_uri="http://127.0.0.2:1/cb")
    assert page.status_code == 400


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"client_uri": None}, "invalid_client_metadata"),
        ({"client_uri": "http://app.example"}, "invalid_client_metadata"),
        ({"client_uri": "https://u:p@app.example"}, "invalid_client_metadata"),
        ({"logo_uri": "https://elsewhere.example/logo.png"}, "invalid_client_metadata"),
        ({"tos_uri#fr": "https://elsewhere.example/tos"}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://app.example/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://app.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://evil.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://localhost/cb"]}, "invalid_redirect_uri"),  # web client
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": "https://app.example/cb"}, "invalid_redirect_uri"),
        ({"application_type": "native", "redirect_uris": ["example:/cb"]}, "invalid_redirect_uri"),
        (
            {"application_type": "native", "redirect_uris": ["app.example:/cb"]},
            "invalid_redirect_uri",
        ),
        (
            {"application_type": "native", "redirect_uris": ["example.app://cb"]},
            "invalid_redirect_uri",
        ),
        (
            {"application_type": "native", "redirect_uris": ["http://localhost:1234/cb"]},
            "invalid_redirect_uri",
        ),
        (
            {"application_type": "native", "redirect_uris": ["https://localhost/cb"]},
            "invalid_redirect_uri",
        ),
        ({"application_type": "desktop"}, "invalid_client_metadata"),
        ({"grant_types": ["implicit"]}, "invalid_client_metadata"),
        ({"response_types": ["token"]}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata"),
        ({"client_name": 5}, "invalid_client_metadata"),
    ],
)
async def test_registration_refuses_bad_metadata(
    tmp_path: Path, db_url: str, overrides: dict[str, Any], error: str
) -> None:
    async with serve(oauth_config(tmp_path, db_url)) as (_, client):
        body = {**CLIENT, **overrides}
        body = {k: v for k, v in body.items() if v is not None}
        response = await client.post("/oauth2/register", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == error


async def test_registration_accepts_what_the_spec_allows(server: Any) -> None:
    _, client, _ = server
    native = [
        "app.example:/callback",
        "app.example.mobile:/callback",
        "app.example:callback",
        "http://localhost/callback",
        "http://127.0.0.1/callback",
        "http://[::1]/callback",
        "https://login.app.example/callback",
    ]
    response = await client.post(
        "/oauth2/register",
        json={
            **CLIENT,
            "client_uri": "https://example.app",
            "application_type": "native",
            "redirect_uris": [u.replace("app.example", "example.app") for u in native[-1:]]
            + ["app.example:/callback", "app.example.mobile:/callback", "app.example:callback"]
            + native[3:6],
            "logo_uri": "https://cdn.example.app/logo.png",
            "client_name#fr": "Client de test",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["client_name#fr"] == "Client de test"
    assert body["token_endpoint_auth_method"] == "none"
    for bad in (b"[]", b"not json", b'{"client_uri": 1}'):
        response = await client.post("/oauth2/register", content=bad)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_client_metadata"


# --- the device authorization grant (RFC 8628) ----------------------------------------------

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


async def device_client(client: httpx.AsyncClient) -> str:
    return await register_client(
        client, grant_types=[DEVICE_GRANT, "refresh_token"], redirect_uris=[], response_types=[]
    )


async def test_device_grant(server: Any) -> None:
    hs, browser, clock = server
    meta = (await browser.get(METADATA)).json()
    assert DEVICE_GRANT in meta["grant_types_supported"]
    assert meta["device_authorization_endpoint"].endswith("/oauth2/device")
    transport = httpx.ASGITransport(app=hs.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as tv:
        client_id = await device_client(tv)
        started = await tv.post(
            "/oauth2/device",
            data={"client_id": client_id, "scope": f"{API} urn:matrix:client:device:TV"},
        )
        assert started.status_code == 200, started.text
        grant = started.json()
        assert re.fullmatch(r"[B-DF-HJ-NP-TV-XZ]{4}-[B-DF-HJ-NP-TV-XZ]{4}", grant["user_code"])
        assert grant["interval"] == 5 and grant["expires_in"] == 600
        poll = {"grant_type": DEVICE_GRANT, "device_code": grant["device_code"]}
        poll["client_id"] = client_id
        oauth_error(await tv.post("/oauth2/token", data=poll), 400, "authorization_pending")
        # Again at once: slow down.
        oauth_error(await tv.post("/oauth2/token", data=poll), 400, "slow_down")
        clock.advance(11_000)
        oauth_error(await tv.post("/oauth2/token", data=poll), 400, "authorization_pending")

        # The person opens the link on their phone and types the code (lower case is fine).
        link = urlsplit(grant["verification_uri_complete"])
        page = await browser.get(f"{link.path}?{link.query}")
        assert page.status_code == 200 and grant["user_code"] in page.text
        csrf = hidden_fields(page.text)["csrf"]
        form = {"csrf": csrf, "code": grant["user_code"].lower(), "username": "alice"}
        wrong = await browser.post("/oauth2/device-link", data={**form, "password": "nope"})
        assert wrong.status_code == 403
        unknown = await browser.post(
            "/oauth2/device-link",
            data={**form, "code": "BBBB-BBBB", "password": DEFAULT_PASSWORD},
        )
        assert unknown.status_code == 400 and "unknown or has expired" in unknown.text
        done = await browser.post(
            "/oauth2/device-link", data={**form, "password": DEFAULT_PASSWORD}
        )
        assert done.status_code == 200 and "Device linked" in done.text
        # The code is used: a second approval finds nothing.
        again = await browser.post(
            "/oauth2/device-link", data={**form, "password": DEFAULT_PASSWORD}
        )
        assert again.status_code == 400

        clock.advance(11_000)
        tokens = await tv.post("/oauth2/token", data=poll)
        assert tokens.status_code == 200, tokens.text
        who = await tv.get(WHOAMI, headers=auth_header(tokens.json()["access_token"]))
        assert who.json()["device_id"] == "TV" and who.json()["user_id"] == "@alice:test"
        # The device code is spent.
        oauth_error(await tv.post("/oauth2/token", data=poll), 400, "invalid_grant")
        # The session's refresh token is the device client's alone.
        refresh = {"grant_type": "refresh_token", "refresh_token": tokens.json()["refresh_token"]}
        other = await register_client(browser)
        oauth_error(
            await tv.post("/oauth2/token", data={**refresh, "client_id": other}),
            400,
            "invalid_grant",
        )
        renewed = await tv.post("/oauth2/token", data={**refresh, "client_id": client_id})
        assert renewed.status_code == 200, renewed.text


async def test_device_grant_denied_expired_and_bad_requests(server: Any) -> None:
    _, browser, clock = server
    client_id = await device_client(browser)

    async def start() -> dict[str, Any]:
        response = await browser.post("/oauth2/device", data={"client_id": client_id, "scope": API})
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    denied = await start()
    page = await browser.get("/oauth2/device-link")
    csrf = hidden_fields(page.text)["csrf"]
    no = await browser.post(
        "/oauth2/device-link", data={"csrf": csrf, "code": denied["user_code"], "action": "deny"}
    )
    assert "Device not linked" in no.text
    poll = {"grant_type": DEVICE_GRANT, "client_id": client_id}
    response = await browser.post(
        "/oauth2/token", data={**poll, "device_code": denied["device_code"]}
    )
    oauth_error(response, 400, "access_denied")

    expired = await start()
    clock.advance(601_000)
    response = await browser.post(
        "/oauth2/token", data={**poll, "device_code": expired["device_code"]}
    )
    oauth_error(response, 400, "expired_token")

    forged = await browser.post(
        "/oauth2/device-link",
        data={"csrf": "forged", "code": "X", "username": "alice", "password": DEFAULT_PASSWORD},
    )
    assert forged.status_code == 403
    oauth_error(await browser.post("/oauth2/token", data=poll), 400, "invalid_request")
    response = await browser.post("/oauth2/token", data={**poll, "device_code": "nope"})
    oauth_error(response, 400, "invalid_grant")
    response = await browser.post("/oauth2/device", data={"client_id": client_id, "scope": "x"})
    oauth_error(response, 400, "invalid_scope")
    # A client that registered only the code grant may not start a device grant.
    code_only = await register_client(browser)
    response = await browser.post("/oauth2/device", data={"client_id": code_only, "scope": API})
    oauth_error(response, 400, "unauthorized_client")
    response = await browser.post("/oauth2/device", data={"client_id": "nope", "scope": API})
    oauth_error(response, 401, "invalid_client")


# --- prompt=create ----------------------------------------------------------------------------


async def test_prompt_create_registers_then_grants(server: Any) -> None:
    _, client, _ = server
    assert (await client.get(METADATA)).json()["prompt_values_supported"] == ["create"]
    client_id = await register_client(client)
    verifier = generate_token(48)
    page = await authorize_raw(client, client_id, verifier, prompt="create")
    assert page.status_code == 200 and "Create an account" in page.text
    assert '<label for="confirm">' in page.text
    form = {**hidden_fields(page.text), "action": "register"}

    async def attempt(username: str, password: str, confirm: str) -> httpx.Response:
        data = {**form, "username": username, "password": password, "confirm": confirm}
        return await client.post("/oauth2/authorize", data=data)

    differ = await attempt("bob", DEFAULT_PASSWORD, DEFAULT_PASSWORD + "x")
    assert differ.status_code == 400 and "differ" in differ.text
    weak = await attempt("bob", "short", "short")
    assert weak.status_code == 400 and "Password must be" in weak.text
    taken = await attempt("alice", DEFAULT_PASSWORD, DEFAULT_PASSWORD)
    assert taken.status_code == 400 and "taken" in taken.text
    invalid = await attempt("no spaces", DEFAULT_PASSWORD, DEFAULT_PASSWORD)
    assert invalid.status_code == 400
    created = await attempt("Bob", DEFAULT_PASSWORD, DEFAULT_PASSWORD)
    assert created.status_code == 303, created.text
    code = parse_qs(urlsplit(created.headers["location"]).query)["code"][0]
    tokens = (await exchange(client, client_id, code, verifier)).json()
    who = await client.get(WHOAMI, headers=auth_header(tokens["access_token"]))
    assert who.json()["user_id"] == "@bob:test"


async def test_prompt_create_when_registration_is_closed(tmp_path: Path, db_url: str) -> None:
    config = oauth_config(tmp_path, db_url, registration={"enabled": False})
    async with serve(config) as (_, client):
        client_id = await register_client(client)
        response = await authorize_raw(client, client_id, generate_token(48), prompt="create")
        assert response.status_code == 303
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["error"] == ["login_required"]


# --- the account management URL -------------------------------------------------------------


async def test_account_management(server: Any) -> None:
    _, client, _ = server
    meta = (await client.get(METADATA)).json()
    assert meta["account_management_uri"].endswith("/oauth2/account")
    assert set(meta["account_management_actions_supported"]) == {
        "org.matrix.profile",
        "org.matrix.devices_list",
        "org.matrix.device_view",
        "org.matrix.device_delete",
    }
    client_id = await register_client(client)
    verifier = generate_token(48)
    for device in ("PHONE", "LAPTOP"):
        page = await authorize_raw(
            client, client_id, verifier, scope=f"{API} urn:matrix:client:device:{device}"
        )
        form = {**hidden_fields(page.text), "username": "alice", "password": DEFAULT_PASSWORD}
        granted = await client.post("/oauth2/authorize", data=form)
        code = parse_qs(urlsplit(granted.headers["location"]).query)["code"][0]
        tokens = (await exchange(client, client_id, code, verifier)).json()
    phone_query = "action=org.matrix.device_delete&device_id=PHONE"
    # Signing in on the authorization page started a browser session: forget it here.
    client.cookies.delete("oauth_account")

    # Not signed in: the sign-in form, which comes back to the same action.
    page = await client.get(f"/oauth2/account?{phone_query}")
    assert page.status_code == 200 and 'action="account/sign-in"' in page.text
    fields = hidden_fields(page.text)
    assert fields["next"] == phone_query
    wrong = await client.post(
        "/oauth2/account/sign-in", data={**fields, "username": "alice", "password": "no"}
    )
    assert wrong.status_code == 403
    forged = await client.post(
        "/oauth2/account/sign-in",
        data={**fields, "csrf": "forged", "username": "alice", "password": DEFAULT_PASSWORD},
    )
    assert forged.status_code == 403
    signed_in = await client.post(
        "/oauth2/account/sign-in",
        data={**fields, "username": "alice", "password": DEFAULT_PASSWORD},
    )
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == f"/oauth2/account?{phone_query}"

    page = await client.get(signed_in.headers["location"])
    assert page.status_code == 200
    assert "End the session PHONE?" in page.text and "LAPTOP" in page.text
    csrf = hidden_fields(page.text)["csrf"]
    unknown = await client.get("/oauth2/account?action=org.matrix.device_view&device_id=NOPE")
    assert "No such session." in unknown.text
    # The older action names still work.
    old = await client.get("/oauth2/account?action=org.matrix.session_end&device_id=LAPTOP")
    assert "End the session LAPTOP?" in old.text
    ended = await client.post(
        "/oauth2/account/session-end", data={"csrf": csrf, "device_id": "PHONE"}
    )
    assert ended.status_code == 303
    page = await client.get("/oauth2/account")
    assert "PHONE" not in page.text and "LAPTOP" in page.text
    missing = await client.post(
        "/oauth2/account/session-end", data={"csrf": csrf, "device_id": "PHONE"}
    )
    assert missing.status_code == 404
    # The LAPTOP session (the last tokens) still works.
    who = await client.get(WHOAMI, headers=auth_header(tokens["access_token"]))
    assert who.json()["device_id"] == "LAPTOP"

    renamed = await client.post(
        "/oauth2/account/profile", data={"csrf": csrf, "displayname": "Alice A."}
    )
    assert renamed.status_code == 303
    profile = await client.get("/_matrix/client/v3/profile/@alice:test")
    assert profile.json()["displayname"] == "Alice A."
    too_long = await client.post(
        "/oauth2/account/profile", data={"csrf": csrf, "displayname": "x" * 1000}
    )
    assert too_long.status_code == 400

    out = await client.post("/oauth2/account/sign-out", data={"csrf": csrf})
    assert out.status_code == 303
    page = await client.get("/oauth2/account")
    assert 'action="account/sign-in"' in page.text
    after = await client.post(
        "/oauth2/account/session-end", data={"csrf": csrf, "device_id": "LAPTOP"}
    )
    assert after.status_code == 303 and after.headers["location"] == "/oauth2/account"
    who = await client.get(WHOAMI, headers=auth_header(tokens["access_token"]))
    assert who.status_code == 200


async def test_client_registration_is_rate_limited(tmp_path: Path, db_url: str) -> None:
    config = oauth_config(
        tmp_path,
        db_url,
        rate_limits={"enabled": True, "registration": {"per_second": 0.1, "burst": 2}},
    )
    async with serve(config, FakeClock()) as (_, client):
        await register_client(client)
        await register_client(client)
        response = await client.post("/oauth2/register", json=CLIENT)
        oauth_error(response, 429, "slow_down")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_junk_never_gives_500(server: Any) -> None:
    _, client, _ = server
    paths = [
        "/oauth2/register",
        "/oauth2/authorize",
        "/oauth2/token",
        "/oauth2/revoke",
        "/oauth2/device",
        "/oauth2/device-link",
        "/oauth2/account/sign-in",
        "/oauth2/account/session-end",
        "/oauth2/account/profile",
        "/oauth2/account/sign-out",
    ]
    bodies = [b"", b"{", b"\xff\xfe", b"a=1&a=2", b"%ff=%fe", b"grant_type=%00", b"[]", b"x" * 5000]
    content_types = ["application/x-www-form-urlencoded", "application/json", "text/plain"]
    for path in paths:
        for body in bodies:
            for content_type in content_types:
                response = await client.post(
                    path, content=body, headers={"content-type": content_type}
                )
                assert response.status_code < 500, (path, body, response.text)
    for query in ["", "client_id=%00", "client_id=a&client_id=b", "redirect_uri=%ff", "code=ä"]:
        for path in ("/oauth2/authorize", "/oauth2/account", "/oauth2/device-link"):
            response = await client.get(f"{path}?{query}")
            assert response.status_code < 500, (path, query, response.text)


async def test_a_signed_in_browser_only_consents(server: Any) -> None:
    _, client, _ = server
    client_id = await register_client(client)
    verifier = generate_token(48)
    await code_for(client, client_id, verifier)  # signs in with the password
    page = await authorize_raw(client, client_id, verifier)
    assert "Allow access to your account" in page.text and "@alice:test" in page.text
    assert 'name="password"' not in page.text
    form = {**hidden_fields(page.text), "action": "consent"}
    granted = await client.post("/oauth2/authorize", data=form)
    assert granted.status_code == 303
    code = parse_qs(urlsplit(granted.headers["location"]).query)["code"][0]
    assert (await exchange(client, client_id, code, verifier)).status_code == 200
    # prompt=login asks for the password again.
    page = await authorize_raw(client, client_id, verifier, prompt="login")
    assert 'name="password"' in page.text
    # Without the session, consent alone is refused.
    client.cookies.delete("oauth_account")
    refused = await client.post("/oauth2/authorize", data=form)
    assert refused.status_code == 403 and 'name="password"' in refused.text
