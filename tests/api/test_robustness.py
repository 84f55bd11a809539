"""No input gives a 500: every route, fed junk, answers with a Matrix error or success."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

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


# A junk room or server name can make the server ask another server (a join of `!x:y`),
# which fails as the spec's remote failure: 502 with a Matrix error, never a crash.
REMOTE_FAILURE = 502


def _check(response: httpx.Response, what: str) -> None:
    status = response.status_code
    assert status < 500 or status == REMOTE_FAILURE, f"{what}: {status} {response.text}"
    if response.status_code >= 400:
        if response.headers.get("content-type", "").startswith("text/html"):
            return  # a page for a browser (SSO, the UIA fallback): its error is a page too
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


_DEEP_OBJECT = b'{"a":' * 101 + b"1" + b"}" * 101
_DEEP_LIST = b'{"body": "x", "a": ' + b"[" * 300 + b"]" * 300 + b"}"
HOSTILE_BODIES: list[bytes] = [
    _DEEP_OBJECT,
    _DEEP_LIST,
    # Unicode everywhere a body may carry a name or an ID.
    '{"body": "é\u2028😀\u202e", "msgtype": "m.text", "displayname": "😀\u0301", '
    '"user_id": "@é:test", "room_id": "!é:test", "name": "\u2028", "device_id": "é", '
    '"username": "é", "type": "m.é", "app_id": "😀", "pushkey": "\u2028"}'.encode(),
    b'{"body": "a\\u0000b", "displayname": "\\u0000", "type": "m.\\u0000"}',
    b'{"n": 9007199254740992, "body": "x", "order": 9007199254740992}',
    # Under the body limit, over the event limit.
    b'{"msgtype": "m.text", "body": "' + b"a" * 70_000 + b'"}',
]
# Percent-encoded: a newline, a space, non-ASCII, a line separator and an emoji, alone and
# after a valid-looking ID.
HOSTILE_PARAMS = ["%0A", "%20", "%C3%A9", "%E2%80%A8", "@u:test%0A", "!r:test%F0%9F%98%80"]


def _fill_real(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}:]+)(:[^}]+)?\}", lambda m: values.get(m.group(1), "m.x"), path)


async def test_hostile_input_never_gives_500_and_never_breaks_a_read(
    hs: Homeserver, client: httpx.AsyncClient
) -> None:
    """Deep nesting, Unicode and oversized bodies at real IDs (so that bodies reach the
    services), and hostile parameters, on both databases; then everything still reads."""
    user, token = await register(client, "fuzzer")
    headers = {**auth_header(token), "Content-Type": "application/json"}
    r = await client.post("/_matrix/client/v3/createRoom", json={}, headers=headers)
    room = r.json()["room_id"]
    r = await client.put(
        f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/t0",
        json={"msgtype": "m.text", "body": "hi"},
        headers=headers,
    )
    real = {"user_id": quote(user), "room_id": quote(room), "event_id": quote(r.json()["event_id"])}
    for method, template in _routes(hs):
        if template.endswith(("/logout", "/logout/all", "/deactivate")):
            continue  # would end the session the rest of the walk needs
        path = _fill_real(template, real)
        for body in HOSTILE_BODIES if method in ("POST", "PUT") else [b""]:
            r = await client.request(method, path, content=body, headers=headers)
            _check(r, f"{method} {path} {body[:40]!r}")
        for param in HOSTILE_PARAMS:
            hostile = _fill(template, param)
            r = await client.request(
                method,
                hostile,
                content=b"{}" if method in ("POST", "PUT") else b"",
                headers=headers,
            )
            _check(r, f"{method} {hostile}")
    # Whatever was stored still renders.
    for path in (
        "/_matrix/client/v3/sync",
        f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b",
        f"/_matrix/client/v3/rooms/{quote(room)}/state",
        "/_matrix/client/v3/notifications",
        "/_matrix/client/v3/pushers",
        "/_matrix/client/v3/pushrules/",
        f"/_matrix/client/v3/profile/{quote(user)}",
    ):
        r = await client.get(path, headers=headers)
        assert r.status_code == 200, (path, r.text)
