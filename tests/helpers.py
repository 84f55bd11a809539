"""Helpers shared by the API tests: accounts made through the real endpoints."""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.core.config import HomeserverConfig
from homeserver.federation.discovery import ServerResolver
from homeserver.lifecycle import running_homeserver
from homeserver.net.addresses import IPAddress
from homeserver.net.outbound import Outbound
from homeserver.storage.database.postgresql import PgConnection
from homeserver.storage.database.sqlite import SqliteConnection
from tests.openapi_schema import assert_response_matches

if TYPE_CHECKING:
    from tests.push_servers import SmtpServer

DEFAULT_PASSWORD = "correct horse battery"
_LINK = re.compile(r"https?://\S+/_homeserver/client/email/submit_token\?\S+")


async def register(
    client: httpx.AsyncClient, localpart: str, password: str = DEFAULT_PASSWORD
) -> tuple[str, str]:
    """Register ``localpart`` through ``POST /register`` (UIA ``m.login.dummy``).

    Returns ``(user_id, access_token)``.
    """
    body = {"username": localpart, "password": password, "auth": {"type": "m.login.dummy"}}
    response = await client.post("/_matrix/client/v3/register", json=body)
    if response.status_code == 401 and "session" in response.json():
        # A server that insists on a session first: complete the stage inside it.
        body["auth"] = {"type": "m.login.dummy", "session": response.json()["session"]}
        response = await client.post("/_matrix/client/v3/register", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return str(data["user_id"]), str(data["access_token"])


def auth_header(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


@asynccontextmanager
async def serve(
    config: HomeserverConfig,
    clock: FakeClock | None = None,
    outbound: Outbound | None = None,
    server_resolver: ServerResolver | None = None,
) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient]]:
    """A homeserver of one's own config (the ``hs`` fixture's is fixed) and a client to it;
    ``outbound`` replaces the config's (e.g. with a resolver that answers test names),
    ``server_resolver`` the discovery of other homeservers."""
    async with running_homeserver(
        config,
        clock=clock or FakeClock(),
        migrate=False,
        outbound=outbound,
        server_resolver=server_resolver,
    ) as hs:
        transport = httpx.ASGITransport(app=hs.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield hs, client


async def login(
    client: httpx.AsyncClient, user: str, password: str = DEFAULT_PASSWORD, **extra: object
) -> dict[str, Any]:
    """``POST /login`` with ``m.login.password``; returns the 200 body."""
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        **extra,
    }
    response = await client.post("/_matrix/client/v3/login", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def assert_errors(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    cases: Sequence[tuple[object, int, str]],
    headers: dict[str, str] | None = None,
) -> None:
    """Send each body (``bytes`` as is, anything else as JSON); check status and errcode.

    One server for many bad inputs keeps the suite fast; the failing case is in the message.
    """
    for body, status, errcode in cases:
        if isinstance(body, bytes):
            response = await client.request(method, path, headers=headers, content=body)
        else:
            response = await client.request(method, path, headers=headers, json=body)
        got = (response.status_code, response.json().get("errcode"))
        assert got == (status, errcode), (body, response.text)


def checked(
    r: httpx.Response, status: int = 200, errcode: str | None = None, *, documented: bool = True
) -> Any:
    """Assert status (and errcode); validate the body against the spec when it documents it."""
    assert r.status_code == status, r.text
    body = r.json()
    if errcode is not None:
        assert body["errcode"] == errcode, r.text
    if documented:
        assert_response_matches(r.request.method, r.request.url.raw_path.decode(), status, body)
    return body


async def create_room(client: httpx.AsyncClient, token: str, **body: Any) -> str:
    """POST /createRoom, checked; the new room's ID."""
    r = await client.post("/_matrix/client/v3/createRoom", headers=auth_header(token), json=body)
    return str(checked(r)["room_id"])


def email_config(smtp: SmtpServer, **extra: Any) -> dict[str, Any]:
    """The ``email`` config section that mails to a test SMTP server."""
    return {
        "enabled": True,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_security": "none",
        "from_address": "Chat <chat@test.org>",
        "app_name": "Chat",
        **extra,
    }


def last_mail(smtp: SmtpServer, to: str) -> EmailMessage:
    """The newest mail received for ``to`` (requestToken sends before it answers)."""
    mails = [m for envelope, m in smtp.messages if envelope.rcpt_tos == [to]]
    assert mails, f"no mail to {to}"
    return mails[-1]


def mailed_link(mail: EmailMessage) -> str:
    """The validation link of a mail, as a path and query for the test client."""
    part = mail.get_body(("plain",))
    assert part is not None
    found = _LINK.search(part.get_content())
    assert found is not None, part.get_content()
    url = urlsplit(found.group(0))
    return f"{url.path}?{url.query}"


async def bind_email(
    client: httpx.AsyncClient,
    smtp: SmtpServer,
    access_token: str,
    user_id: str,
    address: str,
    password: str = DEFAULT_PASSWORD,
) -> None:
    """Add ``address`` to the account the real way: requestToken, the mailed link, then
    /account/3pid/add with the password."""
    secret = f"secret-{secrets.token_hex(6)}"
    r = await client.post(
        "/_matrix/client/v3/account/3pid/email/requestToken",
        json={"client_secret": secret, "email": address, "send_attempt": 1},
    )
    sid = checked(r)["sid"]
    r = await client.get(mailed_link(last_mail(smtp, address.lower())))
    assert r.status_code == 200, r.text
    r = await client.post(
        "/_matrix/client/v3/account/3pid/add",
        headers=auth_header(access_token),
        json={
            "sid": sid,
            "client_secret": secret,
            "auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user_id},
                "password": password,
            },
        },
    )
    checked(r)


class FakeResolver:
    """DNS for outbound requests in tests: answers per name, one per lookup (the last one
    repeats); other names do not resolve."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        replies = self.answers[host]
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        return [ipaddress.ip_address(a) for a in reply]


_COUNTING: ContextVar[bool] = ContextVar("counting_statements", default=False)


@contextmanager
def count_statements() -> Iterator[list[object]]:
    """Every statement storage runs meanwhile for the calling task and the tasks it starts
    (prepared ones bypass SQLAlchemy's events); not the background jobs' statements."""
    statements: list[object] = []
    token = _COUNTING.set(True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for cls in (SqliteConnection, PgConnection):
                original = cls.execute

                async def execute(
                    self: Any, statement: Any, parameters: Any = None, _original: Any = original
                ) -> Any:
                    if _COUNTING.get():
                        statements.append(statement)
                    return await _original(self, statement, parameters)

                mp.setattr(cls, "execute", execute)
            yield statements
    finally:
        _COUNTING.reset(token)
