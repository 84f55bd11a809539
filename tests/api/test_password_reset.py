"""Password reset by e-mail: requestToken for a bound address, the mailed link and its
confirmation page, then /account/password with m.login.email.identity (no old password)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import make_config
from tests.helpers import (
    DEFAULT_PASSWORD,
    assert_errors,
    auth_header,
    bind_email,
    checked,
    email_config,
    last_mail,
    login,
    mailed_link,
    register,
    serve,
)
from tests.push_servers import SmtpServer

CS = "/_matrix/client/v3"
REQUEST_TOKEN = f"{CS}/account/password/email/requestToken"
NEW_PASSWORD = "a new password, long enough"


def _email_auth(sid: str, secret: str = "reset", **extra: Any) -> dict[str, Any]:
    return {
        "type": "m.login.email.identity",
        "threepid_creds": {"sid": sid, "client_secret": secret},
        **extra,
    }


async def _reset(
    client: httpx.AsyncClient,
    auth: dict[str, Any] | None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"new_password": NEW_PASSWORD, **extra}
    if auth is not None:
        body["auth"] = auth
    return await client.post(f"{CS}/account/password", json=body, headers=headers)


async def _whoami(client: httpx.AsyncClient, token: str) -> int:
    r = await client.get(f"{CS}/account/whoami", headers=auth_header(token))
    return r.status_code


async def test_reset_by_email(tmp_path: Path, db_url: str) -> None:
    with SmtpServer() as smtp:
        async with serve(make_config(tmp_path, db_url, email=email_config(smtp))) as (_, client):
            bob, token = await register(client, "bob")
            phone = (await login(client, "bob"))["access_token"]
            await bind_email(client, smtp, token, bob, "bob@example.org")
            # Unknown addresses: the spec's M_THREEPID_NOT_FOUND, and no mail.
            sent = len(smtp.messages)
            r = await client.post(
                REQUEST_TOKEN,
                json={"client_secret": "reset", "email": "nobody@example.org", "send_attempt": 1},
            )
            checked(r, 400, "M_THREEPID_NOT_FOUND")
            assert len(smtp.messages) == sent
            r = await client.post(
                REQUEST_TOKEN,
                json={"client_secret": "reset", "email": "BOB@example.org", "send_attempt": 1},
            )
            sid = checked(r)["sid"]
            mail = last_mail(smtp, "bob@example.org")
            assert mail["Subject"] == "[Chat] Password reset"
            # Offered, but the mail's link has not been opened yet: M_UNAUTHORIZED, which
            # clients retry.
            r = await _reset(client, None)
            flows = checked(r, 401)["flows"]
            assert {"stages": ["m.login.email.identity"]} in flows
            r = await _reset(client, _email_auth(sid))
            challenge = checked(r, 401, "M_UNAUTHORIZED")
            # Opening the link only shows a confirmation (mail scanners open links too).
            link = mailed_link(mail)
            r = await client.get(link, headers={"Accept": "text/html"})
            assert r.status_code == 200 and "<form" in r.text and "reset" in r.text
            r = await _reset(client, _email_auth(sid, session=challenge["session"]))
            checked(r, 401, "M_UNAUTHORIZED")
            # The page's button posts the form.
            query = dict(p.split("=", 1) for p in link.split("?", 1)[1].split("&"))
            r = await client.post(link.split("?", 1)[0], data=query)
            assert r.status_code == 200 and "new password" in r.text
            # Now the password changes without the old one; every device is logged out.
            r = await _reset(client, _email_auth(sid, session=challenge["session"]))
            assert checked(r) == {}
            assert await _whoami(client, token) == 401
            assert await _whoami(client, phone) == 401
            r = await client.post(
                f"{CS}/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "bob"},
                    "password": DEFAULT_PASSWORD,
                },
            )
            checked(r, 403, "M_FORBIDDEN")
            await login(client, "bob", NEW_PASSWORD)
            # One validation, one reset.
            r = await _reset(client, _email_auth(sid))
            checked(r, 401, "M_THREEPID_AUTH_FAILED")


async def test_reset_keeping_devices_and_errors(tmp_path: Path, db_url: str) -> None:
    with SmtpServer() as smtp:
        async with serve(make_config(tmp_path, db_url, email=email_config(smtp))) as (_, client):
            bob, token = await register(client, "bob")
            await bind_email(client, smtp, token, bob, "bob@example.org")
            _, carol = await register(client, "carol")
            r = await client.post(
                REQUEST_TOKEN,
                json={"client_secret": "reset", "email": "bob@example.org", "send_attempt": 1},
            )
            sid = checked(r)["sid"]
            r = await client.post(
                mailed_link(last_mail(smtp, "bob@example.org")).split("?")[0],
                json={
                    "sid": sid,
                    "client_secret": "reset",
                    "token": mailed_link(last_mail(smtp, "bob@example.org")).rsplit("=", 1)[1],
                },
            )
            assert checked(r, documented=False) == {"success": True}
            # Bad credentials: a failed stage, the challenge with an errcode.
            for auth, errcode in [
                (_email_auth(sid, "wrong"), "M_THREEPID_AUTH_FAILED"),
                (_email_auth("nosuchsession"), "M_THREEPID_AUTH_FAILED"),
            ]:
                r = await _reset(client, auth)
                checked(r, 401, errcode)
            await assert_errors(
                client,
                "POST",
                f"{CS}/account/password",
                [
                    (
                        {"new_password": NEW_PASSWORD, "auth": {"type": "m.login.email.identity"}},
                        400,
                        "M_MISSING_PARAM",
                    ),
                    (
                        {
                            "new_password": NEW_PASSWORD,
                            "auth": {
                                "type": "m.login.email.identity",
                                "threepid_creds": {"sid": sid},
                            },
                        },
                        400,
                        "M_MISSING_PARAM",
                    ),
                    (
                        {
                            "new_password": NEW_PASSWORD,
                            "auth": {"type": "m.login.email.identity", "threepid_creds": "x"},
                        },
                        400,
                        "M_BAD_JSON",
                    ),
                    (
                        {
                            "new_password": NEW_PASSWORD,
                            "auth": {
                                "type": "m.login.email.identity",
                                "threepid_creds": {"sid": 1, "client_secret": "reset"},
                            },
                        },
                        400,
                        "M_BAD_JSON",
                    ),
                    ({"new_password": "short", "auth": _email_auth(sid)}, 400, "M_WEAK_PASSWORD"),
                ],
            )
            # Another user's access token with bob's validated address: refused.
            r = await _reset(client, _email_auth(sid), headers=auth_header(carol))
            checked(r, 401, "M_FORBIDDEN")
            # Bob himself, logged in, keeping his devices.
            r = await _reset(
                client, _email_auth(sid), headers=auth_header(token), logout_devices=False
            )
            assert checked(r) == {}
            assert await _whoami(client, token) == 200
            await login(client, "bob", NEW_PASSWORD)
            # An add session cannot reset a password, nor a reset session add an address.
            r = await client.post(
                f"{CS}/account/3pid/email/requestToken",
                json={"client_secret": "add", "email": "new@example.org", "send_attempt": 1},
            )
            add_sid = checked(r)["sid"]
            await client.get(mailed_link(last_mail(smtp, "new@example.org")))
            r = await _reset(client, _email_auth(add_sid, "add"))
            checked(r, 401, "M_THREEPID_AUTH_FAILED")
