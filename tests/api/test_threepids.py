"""E-mail addresses on accounts: requestToken, the mailed link and the submit_url, /3pid/add,
listing and deleting, login by address, with mails received by a real SMTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from homeserver.core.clock import FakeClock
from tests.conftest import make_config
from tests.helpers import (
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
from tests.push_servers import SmtpServer, free_port

CS = "/_matrix/client/v3"
REQUEST_TOKEN = f"{CS}/account/3pid/email/requestToken"
SUBMIT = "/_homeserver/client/email/submit_token"
HTML = {"Accept": "text/html,application/xhtml+xml"}


def _password_auth(user_id: str, password: str = "correct horse battery") -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }


async def _request(
    client: httpx.AsyncClient,
    email: str,
    secret: str = "s3cret",
    attempt: int = 1,
    path: str = REQUEST_TOKEN,
    **extra: Any,
) -> str:
    r = await client.post(
        path, json={"client_secret": secret, "email": email, "send_attempt": attempt, **extra}
    )
    body = checked(r)
    assert body["submit_url"] == f"http://127.0.0.1:8008{SUBMIT}"
    return str(body["sid"])


async def _add(
    client: httpx.AsyncClient,
    token: str,
    sid: str,
    secret: str = "s3cret",
    auth: dict[str, Any] | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"sid": sid, "client_secret": secret}
    if auth is not None:
        body["auth"] = auth
    return await client.post(f"{CS}/account/3pid/add", json=body, headers=auth_header(token))


async def _threepids(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    r = await client.get(f"{CS}/account/3pid", headers=auth_header(token))
    threepids: list[dict[str, Any]] = checked(r)["threepids"]
    return threepids


async def test_add_list_login_delete(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock()
    with SmtpServer() as smtp:
        config = make_config(tmp_path, db_url, email=email_config(smtp))
        async with serve(config, clock) as (_, client):
            bob, token = await register(client, "bob")
            r = await client.get(f"{CS}/capabilities", headers=auth_header(token))
            assert checked(r)["capabilities"]["m.3pid_changes"] == {"enabled": True}
            sid = await _request(client, "Bob@Example.ORG")
            mail = last_mail(smtp, "bob@example.org")
            assert mail["Subject"] == "[Chat] Confirm your e-mail address"
            assert mail["From"] == "Chat <chat@test.org>"
            # The same send attempt again: the same session, no second mail.
            assert await _request(client, "bob@example.org") == sid
            assert len(smtp.messages) == 1
            # Not validated yet.
            r = await _add(client, token, sid, auth=_password_auth(bob))
            checked(r, 400, "M_THREEPID_AUTH_FAILED", documented=False)
            # The link, opened in a browser, validates the session at once.
            link = mailed_link(mail)
            r = await client.get(link, headers=HTML)
            assert r.status_code == 200 and "validated" in r.text
            assert r.headers["content-type"].startswith("text/html")
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            # /3pid/add asks for the password (UIA), then binds the address.
            r = await _add(client, token, sid)
            challenge = checked(r, 401)
            assert challenge["flows"] == [{"stages": ["m.login.password"]}]
            r = await _add(
                client,
                token,
                sid,
                auth={**_password_auth(bob, "wrong password"), "session": challenge["session"]},
            )
            checked(r, 401, "M_FORBIDDEN")
            clock.advance(5000)
            r = await _add(
                client, token, sid, auth={**_password_auth(bob), "session": challenge["session"]}
            )
            assert checked(r) == {}
            [threepid] = await _threepids(client, token)
            assert threepid["medium"] == "email" and threepid["address"] == "bob@example.org"
            assert threepid["added_at"] == threepid["validated_at"] + 5000
            # The session is used up: neither it nor its link works again.
            r = await _add(client, token, sid, auth=_password_auth(bob))
            checked(r, 400, "M_THREEPID_AUTH_FAILED", documented=False)
            r = await client.get(link)
            checked(r, 400, "M_INVALID_PARAM", documented=False)
            # Login by the address, in any case, with the new and the deprecated form.
            session = await login(
                client,
                "unused",
                identifier={
                    "type": "m.id.thirdparty",
                    "medium": "email",
                    "address": "BOB@example.org",
                },
            )
            assert session["user_id"] == bob
            r = await client.post(
                f"{CS}/login",
                json={
                    "type": "m.login.password",
                    "medium": "email",
                    "address": "bob@example.org",
                    "password": "correct horse battery",
                },
            )
            assert checked(r)["user_id"] == bob
            r = await client.post(
                f"{CS}/login",
                json={
                    "type": "m.login.password",
                    "password": "wrong password",
                    "identifier": {
                        "type": "m.id.thirdparty",
                        "medium": "email",
                        "address": "bob@example.org",
                    },
                },
            )
            checked(r, 403, "M_FORBIDDEN")
            # Another account cannot have it.
            _, carol = await register(client, "carol")
            r = await client.post(
                REQUEST_TOKEN,
                json={"client_secret": "other", "email": "bob@example.org", "send_attempt": 1},
            )
            checked(r, 400, "M_THREEPID_IN_USE")
            # An e-mail pusher for it; deleting the address deletes the pusher.
            pusher = {
                "kind": "email",
                "app_id": "m.email",
                "pushkey": "bob@example.org",
                "app_display_name": "E-mail",
                "device_display_name": "bob",
                "lang": "en",
                "data": {},
            }
            r = await client.post(f"{CS}/pushers/set", json=pusher, headers=auth_header(token))
            checked(r)
            r = await client.post(f"{CS}/pushers/set", json=pusher, headers=auth_header(carol))
            checked(r, 400, "M_THREEPID_NOT_FOUND", documented=False)
            r = await client.post(
                f"{CS}/account/3pid/delete",
                headers=auth_header(token),
                json={"medium": "email", "address": "Bob@example.org"},
            )
            assert checked(r) == {"id_server_unbind_result": "no-support"}
            assert await _threepids(client, token) == []
            r = await client.get(f"{CS}/pushers", headers=auth_header(token))
            assert checked(r)["pushers"] == []
            r = await client.post(
                f"{CS}/login",
                json={
                    "type": "m.login.password",
                    "password": "correct horse battery",
                    "identifier": {
                        "type": "m.id.thirdparty",
                        "medium": "email",
                        "address": "bob@example.org",
                    },
                },
            )
            checked(r, 403, "M_FORBIDDEN")
            # Deleting again (a retry) is fine; now carol can have it.
            r = await client.post(
                f"{CS}/account/3pid/delete",
                headers=auth_header(token),
                json={"medium": "email", "address": "bob@example.org"},
            )
            checked(r)
            await bind_email(client, smtp, carol, "@carol:test", "bob@example.org")
            assert [t["address"] for t in await _threepids(client, carol)] == ["bob@example.org"]


async def test_submit_url_and_link_errors(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock()
    with SmtpServer() as smtp:
        config = make_config(
            tmp_path, db_url, email=email_config(smtp, validation_token_lifetime_ms=600_000)
        )
        async with serve(config, clock) as (_, client):
            bob, token = await register(client, "bob")
            sid = await _request(client, "bob@example.org")
            link = mailed_link(last_mail(smtp, "bob@example.org"))
            mailed_token = link.rsplit("token=", 1)[1]
            good = {"sid": sid, "client_secret": "s3cret", "token": mailed_token}
            await assert_errors(
                client,
                "POST",
                SUBMIT,
                [
                    ({**good, "token": "wrong"}, 400, "M_TOKEN_INCORRECT"),
                    ({**good, "client_secret": "other"}, 400, "M_INVALID_PARAM"),
                    ({**good, "sid": "nosuchsession"}, 400, "M_INVALID_PARAM"),
                    ({k: v for k, v in good.items() if k != "token"}, 400, "M_MISSING_PARAM"),
                    ({**good, "token": 5}, 400, "M_BAD_JSON"),
                    (b"not json", 400, "M_NOT_JSON"),
                ],
            )
            # A browser gets a page for a link that does not work; a program, the error.
            r = await client.get(f"{SUBMIT}?sid={sid}&client_secret=s3cret&token=x", headers=HTML)
            assert r.status_code == 400 and "does not work" in r.text
            r = await client.get(f"{SUBMIT}?sid={sid}")
            checked(r, 400, "M_MISSING_PARAM", documented=False)
            # The token, submitted by a client (as to an identity server's submitToken).
            r = await client.post(SUBMIT, json=good)
            assert checked(r, documented=False) == {"success": True}
            r = await client.post(SUBMIT, json=good)  # again: still validated
            assert checked(r, documented=False) == {"success": True}
            # A validated session must be used within the lifetime.
            clock.advance(600_001)
            r = await _add(client, token, sid, auth=_password_auth(bob))
            checked(r, 400, "M_THREEPID_AUTH_FAILED", documented=False)
            r = await client.post(SUBMIT, json=good)
            checked(r, 400, "M_SESSION_EXPIRED", documented=False)
            # A token that expired before it was used.
            sid = await _request(client, "bob@example.org", secret="second")
            link = mailed_link(last_mail(smtp, "bob@example.org"))
            clock.advance(600_001)
            r = await client.get(link)
            checked(r, 400, "M_SESSION_EXPIRED", documented=False)
            r = await client.get(link, headers=HTML)
            assert r.status_code == 400 and "expired" in r.text
            # A new send attempt mails a new link; the earlier ones stay valid while they
            # last.
            sid = await _request(client, "bob@example.org", secret="third")
            first = mailed_link(last_mail(smtp, "bob@example.org"))
            assert await _request(client, "bob@example.org", secret="third", attempt=2) == sid
            second = mailed_link(last_mail(smtp, "bob@example.org"))
            assert first != second and len(smtp.messages) == 4
            r = await client.get(first)
            assert r.status_code == 200


async def test_request_token_bad_input(tmp_path: Path, db_url: str) -> None:
    with SmtpServer() as smtp:
        config = make_config(
            tmp_path, db_url, email=email_config(smtp, next_link_hosts=["client.example.org"])
        )
        async with serve(config) as (_, client):
            _, token = await register(client, "bob")
            good = {"client_secret": "s3cret", "email": "bob@example.org", "send_attempt": 1}
            await assert_errors(
                client,
                "POST",
                REQUEST_TOKEN,
                [
                    (
                        {k: v for k, v in good.items() if k != "client_secret"},
                        400,
                        "M_MISSING_PARAM",
                    ),
                    ({k: v for k, v in good.items() if k != "email"}, 400, "M_MISSING_PARAM"),
                    (
                        {k: v for k, v in good.items() if k != "send_attempt"},
                        400,
                        "M_MISSING_PARAM",
                    ),
                    ({**good, "send_attempt": "1"}, 400, "M_BAD_JSON"),
                    ({**good, "send_attempt": 1.5}, 400, "M_BAD_JSON"),
                    ({**good, "send_attempt": -1}, 400, "M_INVALID_PARAM"),
                    ({**good, "send_attempt": 2**60}, 400, "M_BAD_JSON"),  # past 2**53
                    ({**good, "email": 7}, 400, "M_BAD_JSON"),
                    ({**good, "email": "not-an-address"}, 400, "M_INVALID_PARAM"),
                    ({**good, "email": "bob@localhost"}, 400, "M_INVALID_PARAM"),
                    ({**good, "email": "bob smith@example.org"}, 400, "M_INVALID_PARAM"),
                    ({**good, "email": "Bob <bob@example.org>"}, 400, "M_INVALID_PARAM"),
                    (
                        {**good, "email": "bob@example.org\r\nBcc: eve@example.org"},
                        400,
                        "M_INVALID_PARAM",
                    ),
                    ({**good, "email": "b" * 250 + "@example.org"}, 400, "M_INVALID_PARAM"),
                    ({**good, "client_secret": ""}, 400, "M_INVALID_PARAM"),
                    ({**good, "client_secret": "has space"}, 400, "M_INVALID_PARAM"),
                    ({**good, "client_secret": "x" * 256}, 400, "M_INVALID_PARAM"),
                    ({**good, "next_link": "javascript:alert(1)"}, 400, "M_INVALID_PARAM"),
                    ({**good, "next_link": "https://evil.example.org/"}, 400, "M_INVALID_PARAM"),
                    ({**good, "next_link": 3}, 400, "M_BAD_JSON"),
                    (b"not json", 400, "M_NOT_JSON"),
                    (b"[]", 400, "M_BAD_JSON"),
                ],
            )
            assert smtp.messages == []
            # Registration with an address and phone numbers: refused, clearly.
            r = await client.post(f"{CS}/register/email/requestToken", json=good)
            checked(r, 403, "M_THREEPID_DENIED")
            for path in ("register", "account/3pid", "account/password"):
                r = await client.post(
                    f"{CS}/{path}/msisdn/requestToken",
                    json={
                        "client_secret": "s",
                        "country": "GB",
                        "phone_number": "0770",
                        "send_attempt": 1,
                    },
                )
                checked(r, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
            headers = auth_header(token)
            await assert_errors(
                client,
                "POST",
                f"{CS}/account/3pid/add",
                [
                    ({"client_secret": "s3cret"}, 400, "M_MISSING_PARAM"),
                    ({"sid": "x"}, 400, "M_MISSING_PARAM"),
                    ({"sid": 1, "client_secret": "s3cret"}, 400, "M_BAD_JSON"),
                    (
                        {"sid": "nosuchsession", "client_secret": "s3cret"},
                        400,
                        "M_THREEPID_AUTH_FAILED",
                    ),
                ],
                headers=headers,
            )
            await assert_errors(
                client,
                "POST",
                f"{CS}/account/3pid/delete",
                [
                    ({"medium": "email"}, 400, "M_MISSING_PARAM"),
                    ({"address": "a@example.org"}, 400, "M_MISSING_PARAM"),
                    ({"medium": "fax", "address": "a@example.org"}, 400, "M_INVALID_PARAM"),
                ],
                headers=headers,
            )
            creds = {
                "client_secret": "s",
                "sid": "1",
                "id_server": "id.example.org",
                "id_access_token": "t",
            }
            await assert_errors(
                client,
                "POST",
                f"{CS}/account/3pid/bind",
                [
                    (creds, 400, "M_SERVER_NOT_TRUSTED"),
                    ({"sid": "1"}, 400, "M_MISSING_PARAM"),
                ],
                headers=headers,
            )
            await assert_errors(
                client,
                "POST",
                f"{CS}/account/3pid",
                [
                    ({"three_pid_creds": creds}, 400, "M_SERVER_NOT_TRUSTED"),
                    ({}, 400, "M_MISSING_PARAM"),
                ],
                headers=headers,
            )
            r = await client.post(
                f"{CS}/account/3pid/unbind",
                headers=headers,
                json={"medium": "email", "address": "a@example.org"},
            )
            assert checked(r) == {"id_server_unbind_result": "no-support"}
            # Authentication first, where the spec asks for it.
            for path in (
                "account/3pid",
                "account/3pid/add",
                "account/3pid/delete",
                "account/3pid/bind",
                "account/3pid/unbind",
            ):
                r = await client.post(f"{CS}/{path}", json={})
                checked(r, 401, "M_MISSING_TOKEN", documented=False)
            r = await client.get(f"{CS}/account/3pid")
            checked(r, 401, "M_MISSING_TOKEN", documented=False)


async def test_without_email(client: httpx.AsyncClient) -> None:
    """No mail configured: nothing to validate addresses with."""
    bob, token = await register(client, "bob")
    r = await client.get(f"{CS}/capabilities", headers=auth_header(token))
    assert checked(r)["capabilities"]["m.3pid_changes"] == {"enabled": False}
    good = {"client_secret": "s3cret", "email": "bob@example.org", "send_attempt": 1}
    for path in (REQUEST_TOKEN, f"{CS}/account/password/email/requestToken"):
        r = await client.post(path, json=good)
        checked(r, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
    r = await _add(client, token, "sid", auth=_password_auth(bob))
    checked(r, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED", documented=False)
    assert await _threepids(client, token) == []
    r = await client.post(f"{CS}/account/password", json={"new_password": "another one!"})
    assert checked(r, 401)["flows"] == [{"stages": ["m.login.password"]}]


async def test_next_link_redirects(tmp_path: Path, db_url: str) -> None:
    with SmtpServer() as smtp:
        async with serve(make_config(tmp_path, db_url, email=email_config(smtp))) as (_, client):
            await _request(
                client, "bob@example.org", next_link="https://client.example.org/done?x=1"
            )
            r = await client.get(mailed_link(last_mail(smtp, "bob@example.org")))
            assert r.status_code == 302
            assert r.headers["location"] == "https://client.example.org/done?x=1"


async def test_inhibited_errors_send_nothing(tmp_path: Path, db_url: str) -> None:
    with SmtpServer() as smtp:
        config = make_config(
            tmp_path, db_url, email=email_config(smtp, inhibit_threepid_errors=True)
        )
        async with serve(config) as (_, client):
            bob, token = await register(client, "bob")
            await bind_email(client, smtp, token, bob, "bob@example.org")
            sent = len(smtp.messages)
            # Bound elsewhere, and bound nowhere: answered like the others, nothing sent.
            _, carol = await register(client, "carol")
            sid = await _request(client, "bob@example.org", secret="carol")
            await _request(
                client, "nobody@example.org", path=f"{CS}/account/password/email/requestToken"
            )
            assert len(smtp.messages) == sent
            r = await _add(client, carol, sid, secret="carol", auth=_password_auth("@carol:test"))
            checked(r, 400, "M_THREEPID_AUTH_FAILED", documented=False)


async def test_rate_limit_and_send_failure(tmp_path: Path, db_url: str) -> None:
    with SmtpServer() as smtp:
        config = make_config(
            tmp_path,
            db_url,
            email=email_config(smtp),
            rate_limits={"threepid_validation": {"per_second": 0.001, "burst": 2}},
        )
        async with serve(config) as (hs, client):
            # Per client IP: every request counts, retries too.
            await _request(client, "a@example.org", attempt=1)
            await _request(client, "a@example.org", attempt=2)
            r = await client.post(
                REQUEST_TOKEN,
                json={"client_secret": "s3cret", "email": "c@example.org", "send_attempt": 1},
            )
            body = checked(r, 429, "M_LIMIT_EXCEEDED", documented=False)
            assert body["retry_after_ms"] > 0
            # Per address: each mail counts, whoever asks for it.
            transport = httpx.ASGITransport(app=hs.app, client=("10.0.0.2", 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as other:
                r = await other.post(
                    REQUEST_TOKEN,
                    json={"client_secret": "s3cret", "email": "a@example.org", "send_attempt": 3},
                )
                checked(r, 429, "M_LIMIT_EXCEEDED", documented=False)
                await _request(other, "b@example.org")
            assert len(smtp.messages) == 3
    # The SMTP server is down: a clear error, and the attempt can be retried.
    config = make_config(
        tmp_path,
        db_url,
        email={
            "enabled": True,
            "smtp_host": "127.0.0.1",
            "smtp_port": free_port(),
            "smtp_security": "none",
        },
    )
    async with serve(config) as (_, client):
        for _ in range(2):
            r = await client.post(
                REQUEST_TOKEN,
                json={"client_secret": "s3cret", "email": "d@example.org", "send_attempt": 1},
            )
            checked(r, 502, "M_EMAIL_SEND_ERROR", documented=False)


async def test_deactivation_frees_the_address(tmp_path: Path, db_url: str) -> None:
    with SmtpServer() as smtp:
        async with serve(make_config(tmp_path, db_url, email=email_config(smtp))) as (_, client):
            bob, token = await register(client, "bob")
            await bind_email(client, smtp, token, bob, "bob@example.org")
            r = await client.post(
                f"{CS}/account/deactivate",
                headers=auth_header(token),
                json={"auth": _password_auth(bob)},
            )
            checked(r)
            _, carol = await register(client, "carol")
            await bind_email(client, smtp, carol, "@carol:test", "bob@example.org")
