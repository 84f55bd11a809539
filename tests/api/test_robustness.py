"""No input gives a 500: every route, fed junk, answers with a Matrix error or success."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from homeserver.app import Homeserver
from tests.helpers import auth_header, register

JUNK_BODIES: list[bytes] = [
    b"",
    b"not json",
    b"[]",
    b"null",
    b'"a string"',
    b"{",
    b'{"a": NaN}',
    b'{"limit": 1e400}',
    b'{"n": 123456789012345678901234567890}',
    b'{"room_id": 5, "user_id": [], "visibility": {}, "content": "x", "auth": 7}',
    b'{"username": "\\u0000", "password": "\\ud800"}',
    b"[" * 5000 + b"]" * 5000,
]
JUNK_PARAMS = ["!", "%00", "@:", "#", "$", "a" * 300, "!x:y", "@u:test", "%2F..%2F"]


def _routes(hs: Homeserver) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for route in hs.app.routes:
        children = route.routes if isinstance(route, Mount) else [route]
        prefix = route.path if isinstance(route, Mount) else ""
        for child in children:
            if isinstance(child, Route):
                for method in sorted(child.methods or ()):
                    if method != "HEAD":
                        out.append((method, prefix + child.path))
    return out


def _fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def _check(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        body: Any = response.json()
        if response.status_code == 401 and "flows" in body:
            return  # a user-interactive auth challenge: errcode only after a failed stage
        assert isinstance(body.get("errcode"), str) and body["errcode"].startswith("M_"), what


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_junk_never_gives_500(hs: Homeserver, client: httpx.AsyncClient) -> None:
    _, token = await register(client, "fuzzer")
    headers = {**auth_header(token), "Content-Type": "application/json"}
    for method, template in _routes(hs):
        for param in JUNK_PARAMS:
            path = _fill(template, param)
            for body in JUNK_BODIES if method in ("POST", "PUT") else [b""]:
                r = await client.request(
                    method,
                    path,
                    content=body,
                    headers=headers,
                    params={"limit": "x", "from": "?", "since": "s-1", "dir": "q", "filter": "{"},
                )
                _check(r, f"{method} {path} {body[:40]!r}")


async def test_unknown_endpoint_and_method(client: httpx.AsyncClient) -> None:
    r = await client.get("/_matrix/client/v3/no/such/thing")
    assert (r.status_code, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")
    r = await client.delete("/_matrix/client/v3/createRoom")
    assert (r.status_code, r.json()["errcode"]) == (405, "M_UNRECOGNIZED")


async def test_body_limits(client: httpx.AsyncClient, hs: Homeserver) -> None:
    _, token = await register(client, "big")
    limit = hs.config.limits.max_request_body_bytes
    r = await client.post(
        "/_matrix/client/v3/createRoom",
        headers=auth_header(token),
        content=b"{" + b" " * limit + b"}",
    )
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")
    r = await client.post(
        "/_matrix/client/v3/createRoom", headers=auth_header(token), content=b"{nope"
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_NOT_JSON")


async def test_cors_on_client_endpoints(client: httpx.AsyncClient) -> None:
    r = await client.options(
        "/_matrix/client/v3/sync",
        headers={
            "Origin": "https://app.element.io",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in r.headers["access-control-allow-headers"]
    assert "OPTIONS" in r.headers["access-control-allow-methods"]
    assert r.json() == {}
    r = await client.get("/_matrix/client/versions", headers={"Origin": "https://x.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    # Errors carry them too (a browser client must read the error), and any path answers a
    # preflight (spec, "Web Browser Clients").
    r = await client.get("/_matrix/client/v3/sync")
    assert (r.status_code, r.headers["access-control-allow-origin"]) == (401, "*")
    assert "Content-Type" in r.headers["access-control-allow-headers"]
    r = await client.options(
        "/_matrix/media/v3/upload",
        headers={"Origin": "https://app.element.io", "Access-Control-Request-Method": "POST"},
    )
    assert (r.status_code, r.headers["access-control-allow-origin"]) == (200, "*")
