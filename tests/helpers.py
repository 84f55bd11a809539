"""Helpers shared by the API tests: accounts made through the real endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from homeserver.app import Homeserver, running_homeserver
from homeserver.clock import FakeClock
from homeserver.config import HomeserverConfig
from tests.openapi_schema import assert_response_matches

DEFAULT_PASSWORD = "correct horse battery"


async def register(client: httpx.AsyncClient, localpart: str,
                   password: str = DEFAULT_PASSWORD) -> tuple[str, str]:
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
async def serve(config: HomeserverConfig, clock: FakeClock | None = None
                ) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient]]:
    """A homeserver of one's own config (the ``hs`` fixture's is fixed) and a client to it."""
    async with running_homeserver(config, clock=clock or FakeClock(), migrate=False) as hs:
        transport = httpx.ASGITransport(app=hs.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield hs, client


async def login(client: httpx.AsyncClient, user: str, password: str = DEFAULT_PASSWORD,
                **extra: object) -> dict[str, Any]:
    """``POST /login`` with ``m.login.password``; returns the 200 body."""
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password, **extra}
    response = await client.post("/_matrix/client/v3/login", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def assert_errors(client: httpx.AsyncClient, method: str, path: str,
                        cases: Sequence[tuple[object, int, str]],
                        headers: dict[str, str] | None = None) -> None:
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


def checked(r: httpx.Response, status: int = 200, errcode: str | None = None,
            *, documented: bool = True) -> Any:
    """Assert status (and errcode); validate the body against the spec when it documents it."""
    assert r.status_code == status, r.text
    body = r.json()
    if errcode is not None:
        assert body["errcode"] == errcode, r.text
    if documented:
        assert_response_matches(r.request.method, r.request.url.raw_path.decode(), status,
                                body)
    return body


async def create_room(client: httpx.AsyncClient, token: str, **body: Any) -> str:
    """POST /createRoom, checked; the new room's ID."""
    r = await client.post("/_matrix/client/v3/createRoom", headers=auth_header(token), json=body)
    return str(checked(r)["room_id"])
