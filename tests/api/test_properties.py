"""Property-based tests through the API, on both databases: random bodies (nesting, sizes,
Unicode, types) and identifiers never give a 500, and what is stored reads back and syncs.

Hypothesis runs its (synchronous) examples in a thread; each example drives the test's
server on the test's event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import DEFAULT_PASSWORD, auth_header, register
from tests.unit.test_json_limits_properties import JSON_VALUES, _within_limits

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def _in_thread(check: Callable[[], None]) -> None:
    await asyncio.to_thread(check)


def _on_loop(
    loop: asyncio.AbstractEventLoop, coro: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    asyncio.run_coroutine_threadsafe(coro(), loop).result(timeout=60)


def _no_500(r: httpx.Response, what: object) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json()["errcode"].startswith("M_"), (what, r.text)


async def test_random_bodies_store_and_sync(client: httpx.AsyncClient) -> None:
    user, token = await register(client, "prop")
    h = auth_header(token)
    loop = asyncio.get_running_loop()
    counter = itertools.count()
    stored: dict[str, Any] = {}

    @SETTINGS
    @given(value=JSON_VALUES)
    def check(value: Any) -> None:
        async def run() -> None:
            data_type = f"m.prop.{next(counter)}"
            raw = json.dumps({"v": value}).encode()
            path = f"/_matrix/client/v3/user/{quote(user)}/account_data/{data_type}"
            r = await client.put(path, content=raw, headers=h)
            _no_500(r, value)
            if not _within_limits({"v": value}):
                assert r.status_code == 400, value
                return
            assert r.status_code == 200, (value, r.text)
            stored[data_type] = {"v": value}
            r = await client.get(path, headers=h)
            assert r.status_code == 200 and r.json() == {"v": value}

        _on_loop(loop, run)

    await _in_thread(check)
    r = await client.get("/_matrix/client/v3/sync", headers=h)
    assert r.status_code == 200, r.text
    synced = {e["type"]: e["content"] for e in r.json()["account_data"]["events"]}
    for data_type, content in stored.items():
        assert synced[data_type] == content


async def test_random_event_content_sends_and_syncs(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "prop")
    h = auth_header(token)
    r = await client.post("/_matrix/client/v3/createRoom", json={}, headers=h)
    room = r.json()["room_id"]
    loop = asyncio.get_running_loop()
    counter = itertools.count()

    @SETTINGS
    @given(value=JSON_VALUES)
    def check(value: Any) -> None:
        async def run() -> None:
            raw = json.dumps({"body": "x", "v": value}).encode()
            r = await client.put(
                f"/_matrix/client/v3/rooms/{quote(room)}/send/m.prop/t{next(counter)}",
                content=raw,
                headers=h,
            )
            _no_500(r, value)

        _on_loop(loop, run)

    await _in_thread(check)
    r = await client.get("/_matrix/client/v3/sync", headers=h)
    assert r.status_code == 200, r.text
    r = await client.get(f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b", headers=h)
    assert r.status_code == 200, r.text


async def test_random_identifiers(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "prop")
    h = auth_header(token)
    loop = asyncio.get_running_loop()

    @SETTINGS
    @given(text=st.text(min_size=1, max_size=30))
    def check(text: str) -> None:
        async def run() -> None:
            r = await client.post(
                "/_matrix/client/v3/register",
                json={
                    "username": text,
                    "password": DEFAULT_PASSWORD,
                    "auth": {"type": "m.login.dummy"},
                },
            )
            _no_500(r, text)
            if r.status_code == 200:
                localpart = r.json()["user_id"][1:].partition(":")[0]
                assert localpart == text.lower() and text.isascii()
                assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789._=-/+" for c in localpart)
            for path in (
                f"/_matrix/client/v3/profile/{quote(text, safe='')}",
                f"/_matrix/client/v3/profile/{quote('@' + text + ':test', safe='')}",
                f"/_matrix/client/v3/rooms/{quote('!' + text, safe='')}/messages",
                f"/_matrix/client/v3/directory/room/{quote('#' + text + ':test', safe='')}",
            ):
                _no_500(await client.get(path, headers=h), path)

        _on_loop(loop, run)

    await _in_thread(check)
