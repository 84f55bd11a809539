"""One limit on JSON structure where JSON enters (homeserver/core/json_limits.py).

Past the limit: 400 before anything is stored. At the limit: orjson, canonical JSON and both
databases take it, and every reader (sync, /messages) renders it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from homeserver.app import Homeserver
from homeserver.core.errors import MatrixError
from homeserver.core.json_limits import MAX_JSON_DEPTH, MAX_SAFE_INT, json_depth, loads_limited
from homeserver.events.format import canonical_json
from tests.helpers import auth_header, create_room, register


def nested(depth: int) -> Any:
    """A JSON value exactly ``depth`` containers deep: ``{"a": [[...[1]...]]}``."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


def raw_nested(depth: int) -> bytes:
    """The same as bytes (the stdlib encoder of httpx recurses)."""
    return b'{"a":' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"


def test_nested_helpers_agree() -> None:
    assert json_depth(nested(MAX_JSON_DEPTH)) == MAX_JSON_DEPTH
    assert orjson.loads(raw_nested(7)) == nested(7)


def test_loads_limited() -> None:
    assert loads_limited(raw_nested(MAX_JSON_DEPTH)) == nested(MAX_JSON_DEPTH)
    for bad in (
        raw_nested(MAX_JSON_DEPTH + 1),
        b"[" * 300 + b"]" * 300,
        b'{"n": 9007199254740992}',
        b'{"n": [-9007199254740992]}',
    ):
        with pytest.raises(MatrixError) as e:
            loads_limited(bad)
        assert e.value.code == "M_BAD_JSON"
    assert loads_limited(b'{"n": 9007199254740991, "m": -9007199254740991}')["n"] == MAX_SAFE_INT
    # Long digit runs inside strings are only a reason to look closer.
    assert loads_limited(b'{"s": "12345678901234567890"}') == {"s": "12345678901234567890"}
    with pytest.raises(MatrixError) as e:
        loads_limited(b"{nope")
    assert e.value.code == "M_NOT_JSON"


def test_every_encoder_takes_what_the_limit_lets_in() -> None:
    """What the limit admits, wrapped in the deepest envelope we serve (a WebSocket frame
    around a sync response around an event), still encodes in orjson, canonical JSON and the
    stdlib encoder of SQLAlchemy's JSON columns."""
    content = nested(MAX_JSON_DEPTH)
    event = {"type": "m.x", "content": content}
    envelope: Any = {"rooms": {"join": {"!r:t": {"timeline": {"events": [event]}}}}}
    frame = {"type": "sync", "id": 1, "result": envelope}
    assert orjson.loads(orjson.dumps(frame)) == frame
    assert json.loads(canonical_json(frame)) == frame
    assert json.loads(json.dumps(frame)) == frame


async def _put(client: httpx.AsyncClient, path: str, body: bytes, token: str) -> httpx.Response:
    return await client.put(path, content=body, headers=auth_header(token))


async def test_deep_bodies_refused_everywhere(client: httpx.AsyncClient) -> None:
    user, token = await register(client, "deep")
    room = await create_room(client, token)
    u, r = quote(user), quote(room)
    too_deep = raw_nested(MAX_JSON_DEPTH + 1)
    v = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH  # 101 deep inside any object
    cases: list[tuple[str, str, bytes]] = [
        ("PUT", f"/_matrix/client/v3/user/{u}/account_data/m.x", too_deep),
        ("PUT", f"/_matrix/client/v3/user/{u}/rooms/{r}/account_data/m.x", too_deep),
        ("PUT", f"/_matrix/client/v3/user/{u}/rooms/{r}/tags/t", too_deep),
        ("PUT", f"/_matrix/client/v3/rooms/{r}/send/m.x/t1", too_deep),
        ("PUT", f"/_matrix/client/v3/rooms/{r}/state/m.x/k", too_deep),
        ("PUT", f"/_matrix/client/v3/profile/{u}/m.x", b'{"m.x": ' + v + b"}"),
        ("POST", f"/_matrix/client/v3/user/{u}/filter", b'{"room": {"x": ' + v + b"}}"),
        (
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.x/t2",
            b'{"messages": {"' + user.encode() + b'": {"*": ' + v + b"}}}",
        ),
        ("POST", "/_matrix/client/v3/pushers/set", b'{"data": ' + v + b"}"),
        ("POST", "/_matrix/client/v3/keys/upload", b'{"device_keys": ' + v + b"}"),
        ("POST", "/_matrix/client/v3/createRoom", b'{"creation_content": ' + v + b"}"),
        ("POST", "/_matrix/client/v3/room_keys/version", b'{"auth_data": ' + v + b"}"),
    ]
    for method, path, body in cases:
        got = await client.request(method, path, content=body, headers=auth_header(token))
        assert (got.status_code, got.json()["errcode"]) == (400, "M_BAD_JSON"), (path, got.text)
    # Nothing was stored.
    got = await client.get(
        f"/_matrix/client/v3/user/{u}/account_data/m.x", headers=auth_header(token)
    )
    assert got.status_code == 404
    # Query-string JSON too.
    for path in ("/_matrix/client/v3/sync", f"/_matrix/client/v3/rooms/{r}/messages"):
        got = await client.get(
            path,
            params={"filter": '{"room": ' + "[" * 120 + "]" * 120 + "}"},
            headers=auth_header(token),
        )
        assert (got.status_code, got.json()["errcode"]) == (400, "M_BAD_JSON"), path
    # Integers past the canonical range, in a body that is no event.
    got = await _put(
        client, f"/_matrix/client/v3/user/{u}/account_data/m.x", b'{"n": 9007199254740992}', token
    )
    assert (got.status_code, got.json()["errcode"]) == (400, "M_BAD_JSON")


async def test_at_the_limit_stored_and_served(hs: Homeserver, client: httpx.AsyncClient) -> None:
    """Both databases store what the limit lets in, and sync and /messages serve it."""
    user, token = await register(client, "limit")
    room = await create_room(client, token)
    u, r = quote(user), quote(room)
    at_limit = raw_nested(MAX_JSON_DEPTH)
    got = await _put(client, f"/_matrix/client/v3/user/{u}/account_data/m.deep", at_limit, token)
    assert got.status_code == 200, got.text
    got = await _put(
        client, f"/_matrix/client/v3/user/{u}/rooms/{r}/account_data/m.deep", at_limit, token
    )
    assert got.status_code == 200, got.text
    # The event wraps the content one level deeper: content one short of the limit is an
    # event at the limit; content at the limit makes an event past it.
    got = await _put(client, f"/_matrix/client/v3/rooms/{r}/send/m.x/t1", at_limit, token)
    assert (got.status_code, got.json()["errcode"]) == (400, "M_BAD_JSON")
    event_body = raw_nested(MAX_JSON_DEPTH - 1)
    got = await _put(client, f"/_matrix/client/v3/rooms/{r}/send/m.x/t2", event_body, token)
    assert got.status_code == 200, got.text
    event_id = got.json()["event_id"]
    device = await client.get("/_matrix/client/v3/account/whoami", headers=auth_header(token))
    inner = b"[" * (MAX_JSON_DEPTH - 4) + b"]" * (MAX_JSON_DEPTH - 4)
    to_device = (
        b'{"messages": {"'
        + user.encode()
        + b'": {"'
        + device.json()["device_id"].encode()
        + b'": {"a": '
        + inner
        + b"}}}}"
    )
    got = await _put(client, "/_matrix/client/v3/sendToDevice/m.x/t3", to_device, token)
    assert got.status_code == 200, got.text

    got = await client.get("/_matrix/client/v3/sync", headers=auth_header(token))
    assert got.status_code == 200, got.text
    body = got.json()
    assert any(e["type"] == "m.deep" for e in body["account_data"]["events"])
    joined = body["rooms"]["join"][room]
    assert any(e["type"] == "m.deep" for e in joined["account_data"]["events"])
    assert any(e["event_id"] == event_id for e in joined["timeline"]["events"])
    assert [e["type"] for e in body["to_device"]["events"]] == ["m.x"]
    got = await client.get(
        f"/_matrix/client/v3/rooms/{r}/messages", params={"dir": "b"}, headers=auth_header(token)
    )
    assert any(e["event_id"] == event_id for e in got.json()["chunk"])
    got = await client.get(
        f"/_matrix/client/v3/rooms/{r}/event/{quote(event_id)}", headers=auth_header(token)
    )
    assert got.json()["content"] == nested(MAX_JSON_DEPTH - 1)
