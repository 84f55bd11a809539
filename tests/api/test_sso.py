"""Single sign-on through an upstream OpenID Connect provider: a small provider of the
test's own on loopback, the homeserver talking to it through net/outbound."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from nacl.signing import SigningKey

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.oauth.service import s256
from tests.api.e2ee_helpers import public_of
from tests.conftest import make_config
from tests.helpers import auth_header, serve
from tests.openapi_schema import assert_response_matches
from tests.push_servers import LocalHTTP

LOGIN = "/_matrix/client/v3/login"
REDIRECT = "/_matrix/client/v3/login/sso/redirect"
CLIENT_URL = "https://client.example/done"
OAUTH_REDIRECT = "https://app.example/callback"
NOW_S = 1_700_000_000


class FakeProvider:
    """An OpenID Connect provider that signs in ``subject`` at once (no page)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.subject = "sub-1"
        self.claims: dict[str, Any] = {"preferred_username": "Alice.Smith", "name": "Alice"}
        self.id_token_overrides: dict[str, Any] = {}
        self.grants: dict[str, dict[str, str]] = {}
        self.http: LocalHTTP | None = None
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/userinfo", self.userinfo)
        self.app = app

    @property
    def issuer(self) -> str:
        assert self.http is not None
        return self.http.base_url

    async def discovery(self, _: web.Request) -> web.Response:
        base = self.issuer
        return web.json_response(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "jwks_uri": f"{base}/jwks",
                "userinfo_endpoint": f"{base}/userinfo",
            }
        )

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        code = secrets.token_urlsafe(16)
        self.grants[code] = {
            "nonce": q["nonce"],
            "challenge": q["code_challenge"],
            "redirect_uri": q["redirect_uri"],
        }
        target = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
        raise web.HTTPFound(target)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = self.grants.pop(str(form["code"]), None)
        if (
            grant is None
            or form["client_secret"] != "s3cret"
            or s256(str(form["code_verifier"])) != grant["challenge"]
            or form["redirect_uri"] != grant["redirect_uri"]
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        claims = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": "matrix",
            "exp": NOW_S + 300,
            "iat": NOW_S,
            "nonce": grant["nonce"],
            **self.id_token_overrides,
        }
        id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})
        return web.json_response({"id_token": id_token, "access_token": "at-" + self.subject})

    async def jwks(self, _: web.Request) -> web.Response:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})

    async def userinfo(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer at-{self.subject}":
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"sub": self.subject, **self.claims})


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider()
    async with LocalHTTP(fake.app) as http:
        fake.http = http
        yield fake


def sso_config(provider: FakeProvider, **extra: Any) -> dict[str, Any]:
    return {
        "providers": [
            {
                "id": "corp",
                "name": "Corp SSO",
                "issuer": provider.issuer,
                "client_id": "matrix",
                "client_secret": "s3cret",
                **extra,
            }
        ]
    }


async def through_provider(
    client: httpx.AsyncClient, redirect_url: str = CLIENT_URL
) -> httpx.Response:
    """The browser: /login/sso/redirect, the provider, back to the callback."""
    started = await client.get(REDIRECT + "/corp", params={"redirectUrl": redirect_url})
    assert started.status_code == 302, started.text
    async with httpx.AsyncClient() as browser:
        at_provider = await browser.get(started.headers["location"])
    assert at_provider.status_code == 302
    back = urlsplit(at_provider.headers["location"])
    return await client.get(f"{back.path}?{back.query}")


def login_token_of(response: httpx.Response) -> str:
    location = response.headers["location"]
    assert location.startswith(CLIENT_URL + "?")
    return parse_qs(urlsplit(location).query)["loginToken"][0]


async def token_login(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(LOGIN, json={"type": "m.login.token", "token": token})


@pytest.fixture
async def sso_server(
    tmp_path: Path, db_url: str, provider: FakeProvider
) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient]]:
    config = make_config(tmp_path, db_url, sso=sso_config(provider))
    async with serve(config, FakeClock(NOW_S * 1000)) as served:
        yield served


async def test_first_sign_in_chooses_a_username_then_the_second_finds_it(
    sso_server: tuple[Homeserver, httpx.AsyncClient], provider: FakeProvider
) -> None:
    _, client = sso_server
    flows = (await client.get(LOGIN)).json()["flows"]
    assert {
        "type": "m.login.sso",
        "identity_providers": [{"id": "corp", "name": "Corp SSO"}],
    } in flows
    assert {"type": "m.login.token"} in flows
    assert_response_matches("GET", LOGIN, 200, {"flows": flows})

    page = await through_provider(client)
    assert page.status_code == 200, page.text
    assert 'value="alice.smith"' in page.text and '<label for="username">' in page.text
    # The form's answer redirects to the client: its CSP must allow that (browsers apply
    # form-action to the redirects after a submission).
    assert "form-action 'self' https://client.example;" in page.headers["content-security-policy"]
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    taken = await client.post(
        "/oauth2/upstream/username", data={"csrf": csrf, "username": "no spaces"}
    )
    assert taken.status_code == 400 and 'role="alert"' in taken.text
    assert "https://client.example;" in taken.headers["content-security-policy"]
    forged = await client.post("/oauth2/upstream/username", data={"csrf": "x", "username": "a"})
    assert forged.status_code == 403
    chosen = await client.post(
        "/oauth2/upstream/username", data={"csrf": csrf, "username": "alice"}
    )
    assert chosen.status_code == 303, chosen.text
    token = login_token_of(chosen)
    logged_in = await token_login(client, token)
    assert logged_in.status_code == 200, logged_in.text
    assert logged_in.json()["user_id"] == "@alice:test"
    profile = await client.get("/_matrix/client/v3/profile/@alice:test")
    assert profile.json()["displayname"] == "Alice"
    # A login token is used once.
    again = await token_login(client, token)
    assert (again.status_code, again.json()["errcode"]) == (403, "M_FORBIDDEN")

    # The second sign-in of the same subject asks before the token goes to the client.
    second = await through_provider(client)
    assert second.status_code == 200 and "Continue to client.example?" in second.text
    assert "https://client.example;" in second.headers["content-security-policy"]
    confirm_csrf = second.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    forged_confirm = await client.post("/oauth2/upstream/confirm", data={"csrf": "x"})
    assert forged_confirm.status_code == 403
    # The chooser cannot make a second account for a linked identity.
    chooser = await client.post(
        "/oauth2/upstream/username", data={"csrf": confirm_csrf, "username": "alice2"}
    )
    assert chooser.status_code == 400
    confirmed = await client.post("/oauth2/upstream/confirm", data={"csrf": confirm_csrf})
    assert confirmed.status_code == 303
    response = await token_login(client, login_token_of(confirmed))
    assert response.json()["user_id"] == "@alice:test"
    who = await client.get(
        "/_matrix/client/v3/account/whoami", headers=auth_header(response.json()["access_token"])
    )
    assert who.json()["user_id"] == "@alice:test"


async def test_forged_state_and_missing_session(
    sso_server: tuple[Homeserver, httpx.AsyncClient], provider: FakeProvider
) -> None:
    _, client = sso_server
    started = await client.get(REDIRECT, params={"redirectUrl": CLIENT_URL})
    assert started.status_code == 302
    async with httpx.AsyncClient() as browser:
        at_provider = await browser.get(started.headers["location"])
    back = parse_qs(urlsplit(at_provider.headers["location"]).query)
    forged = await client.get(
        "/oauth2/upstream/callback", params={"code": back["code"][0], "state": "forged"}
    )
    assert forged.status_code == 400 and "forged" in forged.text
    client.cookies.clear()
    no_cookie = await client.get(
        "/oauth2/upstream/callback", params={"code": back["code"][0], "state": back["state"][0]}
    )
    assert no_cookie.status_code == 400 and "session cookie" in no_cookie.text
    refused = await client.get(
        "/oauth2/upstream/callback", params={"error": "access_denied", "state": "x"}
    )
    assert refused.status_code == 400


async def test_bad_id_tokens_are_refused(
    sso_server: tuple[Homeserver, httpx.AsyncClient], provider: FakeProvider
) -> None:
    _, client = sso_server
    for overrides, reason in [
        ({"nonce": "other"}, "nonce"),
        ({"aud": "someone-else"}, "not valid"),
        ({"iss": "https://evil.example"}, "not valid"),
        ({"exp": NOW_S - 3600}, "expired"),
    ]:
        provider.id_token_overrides = overrides
        page = await through_provider(client)
        assert page.status_code == 403, (overrides, page.text)
        assert reason in page.text


async def test_redirect_checks(
    sso_server: tuple[Homeserver, httpx.AsyncClient], provider: FakeProvider
) -> None:
    _, client = sso_server
    missing = await client.get(REDIRECT)
    assert (missing.status_code, missing.json()["errcode"]) == (400, "M_MISSING_PARAM")
    relative = await client.get(REDIRECT, params={"redirectUrl": "/relative"})
    assert (relative.status_code, relative.json()["errcode"]) == (400, "M_INVALID_PARAM")
    unknown = await client.get(REDIRECT + "/nope", params={"redirectUrl": CLIENT_URL})
    assert (unknown.status_code, unknown.json()["errcode"]) == (404, "M_NOT_FOUND")
    bad_token = await token_login(client, "nothing")
    assert (bad_token.status_code, bad_token.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_allowed_email_domains(tmp_path: Path, db_url: str, provider: FakeProvider) -> None:
    config = make_config(
        tmp_path, db_url, sso=sso_config(provider, allowed_email_domains=["corp.example"])
    )
    async with serve(config, FakeClock(NOW_S * 1000)) as (_, client):
        provider.claims = {"email": "a@elsewhere.example", "email_verified": True}
        page = await through_provider(client)
        assert page.status_code == 403 and "domain" in page.text
        provider.claims = {"email": "a@corp.example", "email_verified": False}
        page = await through_provider(client)
        assert page.status_code == 403 and "verified" in page.text
        provider.claims = {"email": "a@CORP.example", "email_verified": True}
        page = await through_provider(client)
        assert page.status_code == 200 and "Choose your username" in page.text


async def test_off_without_providers(tmp_path: Path, db_url: str) -> None:
    async with serve(make_config(tmp_path, db_url)) as (_, client):
        flows = (await client.get(LOGIN)).json()["flows"]
        assert all(f["type"] not in ("m.login.sso", "m.login.token") for f in flows)
        response = await client.get(REDIRECT, params={"redirectUrl": CLIENT_URL})
        assert (response.status_code, response.json()["errcode"]) == (404, "M_UNRECOGNIZED")


def relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_oauth_sign_in_page_offers_the_provider(
    tmp_path: Path, db_url: str, provider: FakeProvider
) -> None:
    config = make_config(tmp_path, db_url, sso=sso_config(provider), oauth={"enabled": True})
    async with serve(config, FakeClock(NOW_S * 1000)) as (_, client):
        registered = await client.post(
            "/oauth2/register",
            json={"client_uri": "https://app.example", "redirect_uris": [OAUTH_REDIRECT]},
        )
        client_id = registered.json()["client_id"]
        verifier = secrets.token_urlsafe(48)
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": OAUTH_REDIRECT,
            "scope": "urn:matrix:client:api:*",
            "state": "st",
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
        }
        page = await client.get("/oauth2/authorize", params=query)
        assert page.status_code == 200
        link = page.text.split('<ul class="sso"><li><a href="', 1)[1].split('"', 1)[0]
        assert ">Corp SSO</a>" in page.text
        started = await client.get(relative(unescape(link)))
        assert started.status_code == 302
        async with httpx.AsyncClient() as browser:
            at_provider = await browser.get(started.headers["location"])
        chooser = await client.get(relative(at_provider.headers["location"]))
        csrf = chooser.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        chosen = await client.post(
            "/oauth2/upstream/username", data={"csrf": csrf, "username": "carol"}
        )
        assert chosen.status_code == 303
        back = chosen.headers["location"]
        assert "loginToken=" in back and "/oauth2/authorize?" in back
        # Another browser (no CSRF cookie) cannot use the way back.
        transport = client._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as other:
            stolen = await other.get(relative(back))
            assert stolen.status_code == 403
        consent = await client.get(relative(back))
        # Signed in: the consent page names the account and the client, and its form may
        # send the browser to the client's redirect URI (CSP form-action), nowhere else.
        assert consent.status_code == 200, consent.text
        assert "@carol:test" in consent.text and "https://app.example" in consent.text
        csp = consent.headers["content-security-policy"]
        assert "form-action 'self' https://app.example;" in csp
        form = {
            name: unescape(value)
            for name, value in re.findall(
                r'<input type="hidden" name="([^"]*)" value="([^"]*)">', consent.text
            )
        }
        assert "loginToken" not in form and "sso_csrf" not in form
        granted = await client.post("/oauth2/authorize", data={**form, "action": "consent"})
        assert granted.status_code == 303, granted.text
        location = granted.headers["location"]
        assert location.startswith(OAUTH_REDIRECT + "?")
        code = parse_qs(urlsplit(location).query)["code"][0]
        tokens = await client.post(
            "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "client_id": client_id,
                "redirect_uri": OAUTH_REDIRECT,
                "code_verifier": verifier,
            },
        )
        assert tokens.status_code == 200, tokens.text
        who = await client.get(
            "/_matrix/client/v3/account/whoami",
            headers=auth_header(tokens.json()["access_token"]),
        )
        assert who.json()["user_id"] == "@carol:test"
        # The login token is spent: the same way back again fails.
        again = await client.get(relative(back))
        assert again.status_code == 403


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_junk_never_gives_500(
    sso_server: tuple[Homeserver, httpx.AsyncClient], provider: FakeProvider
) -> None:
    _, client = sso_server
    await through_provider(client)  # a session cookie, with claims waiting
    for path in ("/oauth2/upstream/username", "/oauth2/upstream/confirm"):
        for body in (b"", b"\xff", b"csrf=%ff", b"csrf=a&csrf=b", b"username=" + b"x" * 5000):
            response = await client.post(
                path, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
            )
            assert response.status_code < 500, (path, body, response.text)
    for query in ("", "state=%ff", "code=x&state=", "error=x" * 50, "redirectUrl=%ff"):
        for path in ("/oauth2/upstream/callback", REDIRECT, REDIRECT + "/corp"):
            response = await client.get(f"{path}?{query}")
            assert response.status_code < 500, (path, query, response.text)


async def test_backchannel_logout_ends_the_sessions(
    sso_server: tuple[Homeserver, httpx.AsyncClient], provider: FakeProvider
) -> None:
    _, client = sso_server
    page = await through_provider(client)
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    chosen = await client.post(
        "/oauth2/upstream/username", data={"csrf": csrf, "username": "alice"}
    )
    access = (await token_login(client, login_token_of(chosen))).json()["access_token"]
    whoami = "/_matrix/client/v3/account/whoami"
    url = "/oauth2/upstream/backchannel-logout/corp"
    event = {"http://schemas.openid.net/event/backchannel-logout": {}}

    def logout_token(key: Any = None, **overrides: Any) -> str:
        claims = {
            "iss": provider.issuer,
            "aud": "matrix",
            "iat": NOW_S,
            "jti": secrets.token_hex(8),
            "sub": provider.subject,
            "events": event,
            **overrides,
        }
        return jwt.encode(claims, key or provider.key, algorithm="RS256", headers={"kid": "k1"})

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for bad in (
        logout_token(events={}),
        logout_token(nonce="n"),
        logout_token(iat=NOW_S - 3600),
        logout_token(aud="other"),
        logout_token(key=other_key),
        "junk",
    ):
        response = await client.post(url, data={"logout_token": bad})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
    assert (await client.post(url, data={})).status_code == 400
    assert (await client.get(whoami, headers=auth_header(access))).status_code == 200
    # Another subject: nothing to end.
    response = await client.post(url, data={"logout_token": logout_token(sub="someone")})
    assert response.status_code == 200
    assert (await client.get(whoami, headers=auth_header(access))).status_code == 200
    response = await client.post(url, data={"logout_token": logout_token()})
    assert response.status_code == 200
    assert (await client.get(whoami, headers=auth_header(access))).status_code == 401
    unknown = await client.post(
        "/oauth2/upstream/backchannel-logout/nope", data={"logout_token": logout_token()}
    )
    assert unknown.status_code == 404


# --- user-interactive authentication by single sign-on (the fallback page) -----------------

FALLBACK = "/_matrix/client/v3/auth/m.login.sso/fallback/web"
WHOAMI = "/_matrix/client/v3/account/whoami"
SIGNING_UPLOAD = "/_matrix/client/v3/keys/device_signing/upload"


def master_key_body() -> dict[str, Any]:
    public = public_of(SigningKey.generate())
    return {
        "master_key": {
            "user_id": "@alice:test",
            "usage": ["master"],
            "keys": {f"ed25519:{public}": public},
        }
    }


async def sso_account(client: httpx.AsyncClient, username: str) -> str:
    """A new account through the provider (no password); its access token."""
    page = await through_provider(client)
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    chosen = await client.post(
        "/oauth2/upstream/username", data={"csrf": csrf, "username": username}
    )
    assert chosen.status_code == 303, chosen.text
    response = await token_login(client, login_token_of(chosen))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def confirm_in_browser(client: httpx.AsyncClient, session: str) -> httpx.Response:
    """The fallback page, its button, the provider, back to the callback."""
    page = await client.get(FALLBACK, params={"session": session})
    assert page.status_code == 200, page.text
    onward = unescape(page.text.split('class="allow" href="', 1)[1].split('"', 1)[0])
    assert onward.startswith("web?")
    started = await client.get(FALLBACK.rsplit("/", 1)[0] + "/" + onward)
    assert started.status_code == 302, started.text
    async with httpx.AsyncClient() as browser:
        at_provider = await browser.get(started.headers["location"])
    back = urlsplit(at_provider.headers["location"])
    return await client.get(f"{back.path}?{back.query}")


async def test_an_sso_account_passes_uia_through_the_fallback(
    sso_server: tuple[Homeserver, httpx.AsyncClient], provider: FakeProvider
) -> None:
    _, client = sso_server
    token = await sso_account(client, "alice")
    headers = auth_header(token)
    # A first cross-signing key needs no authentication; replacing it does.
    first_keys = await client.post(SIGNING_UPLOAD, json=master_key_body(), headers=headers)
    assert first_keys.status_code == 200, first_keys.text
    requests: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/_matrix/client/v3/delete_devices", {"devices": ["GONE"]}, "delete devices"),
        ("POST", SIGNING_UPLOAD, master_key_body(), "cross-signing"),
        ("POST", "/_matrix/client/v3/account/password", {"new_password": "n3w-pass"}, "password"),
    ]
    for method, path, body, purpose in requests:
        first = await client.request(method, path, json=body, headers=headers)
        assert first.status_code == 401, first.text
        # No password on this account: single sign-on is the only way.
        assert first.json()["flows"] == [{"stages": ["m.login.sso"]}], first.json()
        session = first.json()["session"]
        early = await client.request(
            method,
            path,
            json={**body, "auth": {"type": "m.login.sso", "session": session}},
            headers=headers,
        )
        assert (early.status_code, early.json()["errcode"]) == (401, "M_UNAUTHORIZED")
        assert early.json()["completed"] == []
        page = await client.get(FALLBACK, params={"session": session})
        assert purpose in page.text and "Corp SSO" in page.text and "@alice:test" in page.text
        done = await confirm_in_browser(client, session)
        assert done.status_code == 200 and "Confirmed" in done.text
        csp = done.headers["content-security-policy"]
        assert "script-src 'sha256-" in csp and 'postMessage("authDone","*")' in done.text
        again = await client.request(
            method, path, json={**body, "auth": {"session": session}}, headers=headers
        )
        assert again.status_code == 200, again.text
        if path != SIGNING_UPLOAD:  # the same keys again need no authentication
            # The session is used up.
            replay = await client.request(
                method, path, json={**body, "auth": {"session": session}}, headers=headers
            )
            assert replay.status_code == 400, replay.text

    # With a password now (set above), both ways are offered.
    challenge = await client.post("/_matrix/client/v3/account/deactivate", json={}, headers=headers)
    assert challenge.json()["flows"] == [
        {"stages": ["m.login.password"]},
        {"stages": ["m.login.sso"]},
    ]
    session = challenge.json()["session"]
    assert (await confirm_in_browser(client, session)).status_code == 200
    gone = await client.post(
        "/_matrix/client/v3/account/deactivate",
        json={"auth": {"session": session}},
        headers=headers,
    )
    assert gone.status_code == 200, gone.text
    assert (await client.get(WHOAMI, headers=headers)).status_code == 401


async def test_uia_by_sso_refuses_another_identity_and_bad_sessions(
    sso_server: tuple[Homeserver, httpx.AsyncClient], provider: FakeProvider
) -> None:
    _, client = sso_server
    alice = await sso_account(client, "alice")
    provider.subject = "sub-2"
    provider.claims = {"preferred_username": "bob"}
    await sso_account(client, "bob")
    provider.subject = "sub-1"

    start = await client.post(
        "/_matrix/client/v3/delete_devices", json={"devices": []}, headers=auth_header(alice)
    )
    session = start.json()["session"]
    # Bob's identity at the provider cannot confirm Alice's request.
    provider.subject = "sub-2"
    refused = await confirm_in_browser(client, session)
    assert refused.status_code == 403 and "another account" in refused.text
    still = await client.post(
        "/_matrix/client/v3/delete_devices",
        json={"devices": [], "auth": {"session": session}},
        headers=auth_header(alice),
    )
    assert still.status_code == 401 and still.json()["completed"] == []
    # An identity linked to no account at all.
    provider.subject = "sub-unknown"
    unknown = await confirm_in_browser(client, session)
    assert unknown.status_code == 403 and "not linked" in unknown.text

    # Bad fallback requests are pages, never 500s.
    for params, status in (({}, 400), ({"session": "nope"}, 400)):
        page = await client.get(FALLBACK, params=params)
        assert page.status_code == status, page.text
        assert page.headers["content-type"].startswith("text/html")
    other = await client.get(
        "/_matrix/client/v3/auth/m.login.password/fallback/web", params={"session": session}
    )
    assert other.status_code == 404
    # A registration's session has no signed-in user to confirm.
    registration = await client.post("/_matrix/client/v3/register", json={"username": "carol"})
    assert registration.status_code == 401
    page = await client.get(FALLBACK, params={"session": registration.json()["session"]})
    assert page.status_code == 403
    # Re-authentication starts on the fallback page only, never from /login/sso/redirect.
    forged = await client.get(REDIRECT + "/corp", params={"redirectUrl": f"uia:{session}"})
    assert (forged.status_code, forged.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_password_accounts_are_not_offered_sso(
    sso_server: tuple[Homeserver, httpx.AsyncClient],
) -> None:
    hs, client = sso_server
    await hs.accounts.register_user_admin("dave", "pa55word-dave", admin=False)
    login = await client.post(
        LOGIN,
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "dave"},
            "password": "pa55word-dave",
        },
    )
    headers = auth_header(login.json()["access_token"])
    challenge = await client.post(
        "/_matrix/client/v3/delete_devices", json={"devices": []}, headers=headers
    )
    assert challenge.json()["flows"] == [{"stages": ["m.login.password"]}]
    page = await client.get(FALLBACK, params={"session": challenge.json()["session"]})
    assert page.status_code == 403 and "no single sign-on identity" in page.text
