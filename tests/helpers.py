"""Helpers shared by the API tests: accounts made through the real endpoints."""

from __future__ import annotations

import httpx

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
