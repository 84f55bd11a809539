"""Helpers of the admin API tests: an administrator made as ``register-user --admin`` does."""

from __future__ import annotations

from typing import Any

import httpx

from homeserver.app import Homeserver
from tests.helpers import DEFAULT_PASSWORD, auth_header, login

ADMIN = "/_synapse/admin"


async def make_admin(hs: Homeserver, client: httpx.AsyncClient, localpart: str = "root") -> str:
    """An administrator's access token (the account made as the CLI makes it)."""
    await hs.accounts.register_user_admin(localpart, DEFAULT_PASSWORD, True)
    return str((await login(client, localpart))["access_token"])


async def call(
    client: httpx.AsyncClient,
    token: str,
    method: str,
    path: str,
    body: Any = None,
    status: int = 200,
    errcode: str | None = None,
) -> Any:
    """One admin API request, checked: the JSON answer."""
    r = await client.request(
        method, ADMIN + path, headers=auth_header(token), json=body if body is not None else None
    )
    assert r.status_code == status, (method, path, r.text)
    data = r.json()
    if errcode is not None:
        assert data["errcode"] == errcode, (method, path, r.text)
    return data


async def refused_to_non_admins(
    client: httpx.AsyncClient, token: str, requests: list[tuple[str, str, Any]]
) -> None:
    """Each request answers 403 M_FORBIDDEN to a user who is not an administrator, and 401
    without a token."""
    for method, path, body in requests:
        await call(client, token, method, path, body, 403, "M_FORBIDDEN")
        r = await client.request(method, ADMIN + path, json=body)
        assert r.status_code == 401, (method, path, r.text)
