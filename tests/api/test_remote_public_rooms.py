"""publicRooms?server=other: the other server's directory, asked over federation.

The remote is a real HTTP server on loopback (aiohttp) answering like a homeserver's
/_matrix/federation/v1/publicRooms; the signed request to it is sent over plain HTTP
(discovery, TLS and X-Matrix have their own tests) and decoded by FederationClient's rules.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.federation.client import FederationClient, FederationError
from homeserver.rooms.remote_directory import CACHE_MS
from tests.conftest import make_config
from tests.federation_helpers import served_offline
from tests.helpers import auth_header, register, serve
from tests.push_servers import LocalHTTP

REMOTE = "remote.test"
ROOMS = [
    {
        "room_id": f"!room{i}:remote.test",
        "name": f"Room {i}" + (" cats" if i % 2 else ""),
        "num_joined_members": 10 - i,
        "world_readable": False,
        "guest_can_join": False,
    }
    for i in range(5)
]


class FakeDirectory:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answer: Any = None  # None: the real directory
        self.can_search = True
        app = web.Application()
        app.router.add_get("/_matrix/federation/v1/publicRooms", self._get)
        app.router.add_post("/_matrix/federation/v1/publicRooms", self._post)
        self.http = LocalHTTP(app)

    def _page(self, rooms: list[dict[str, Any]], limit: int | None, since: str | None) -> Any:
        if self.answer is not None:
            return self.answer
        start = int(since) if since else 0
        end = len(rooms) if limit is None else start + limit
        page: dict[str, Any] = {"chunk": rooms[start:end], "total_room_count_estimate": 5}
        if end < len(rooms):
            page["next_batch"] = str(end)
        if start > 0:
            page["prev_batch"] = str(max(0, start - (limit or 0)))
        return page

    async def _get(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.calls.append(("GET", query))
        limit = int(query["limit"]) if "limit" in query else None
        return web.json_response(self._page(ROOMS, limit, query.get("since")))

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("POST", body))
        if not self.can_search:
            return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "?"}, status=404)
        term = (body.get("filter") or {}).get("generic_search_term")
        rooms = [r for r in ROOMS if term is None or term in str(r["name"])]
        return web.json_response(self._page(rooms, body.get("limit"), body.get("since")))


class PlainFederation:
    """``request`` of FederationClient, to the fake remote over plain HTTP."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def request(
        self,
        destination: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        content: Any = None,
    ) -> Any:
        if destination != REMOTE:
            raise FederationError(destination, "unreachable")
        url = self.base_url + path + ("?" + urlencode(query) if query else "")
        async with httpx.AsyncClient() as http:
            body = None if content is None else json.dumps(content).encode()
            r = await http.request(method, url, content=body)
        return FederationClient._decode(destination, r.status_code, r.content)


@pytest.fixture
async def directory() -> AsyncIterator[FakeDirectory]:
    server = FakeDirectory()
    async with server.http:
        yield server


@pytest.fixture
async def served(
    tmp_path: Path, db_url: str, clock: FakeClock, directory: FakeDirectory
) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient, str]]:
    async for hs, client in served_offline(tmp_path, db_url, clock):
        assert hs.remote_directories is not None
        hs.remote_directories._client = PlainFederation(directory.http.base_url)
        _, token = await register(client, "alice")
        yield hs, client, token


async def test_get_pages_and_cache(
    served: tuple[Homeserver, httpx.AsyncClient, str], directory: FakeDirectory, clock: FakeClock
) -> None:
    _, client, _ = served
    r = await client.get("/_matrix/client/v3/publicRooms", params={"server": REMOTE, "limit": 2})
    assert r.status_code == 200, r.text
    page = r.json()
    assert [room["room_id"] for room in page["chunk"]] == [
        "!room0:remote.test",
        "!room1:remote.test",
    ]
    assert page["next_batch"] == "2" and page["total_room_count_estimate"] == 5
    r = await client.get(
        "/_matrix/client/v3/publicRooms",
        params={"server": REMOTE, "limit": 2, "since": page["next_batch"]},
    )
    assert [room["room_id"] for room in r.json()["chunk"]] == [
        "!room2:remote.test",
        "!room3:remote.test",
    ]
    assert r.json()["prev_batch"] == "0"
    assert directory.calls == [
        ("GET", {"include_all_networks": "false", "limit": "2"}),
        ("GET", {"include_all_networks": "false", "limit": "2", "since": "2"}),
    ]
    # The same unfiltered page again: from the cache, until it lapses.
    await client.get("/_matrix/client/v3/publicRooms", params={"server": REMOTE, "limit": 2})
    assert len(directory.calls) == 2
    clock.advance(CACHE_MS + 1)
    await client.get("/_matrix/client/v3/publicRooms", params={"server": REMOTE, "limit": 2})
    assert len(directory.calls) == 3


async def test_post_forwards_filter_and_options(
    served: tuple[Homeserver, httpx.AsyncClient, str], directory: FakeDirectory
) -> None:
    _, client, token = served
    body = {
        "limit": 1,
        "filter": {"generic_search_term": "cats"},
        "include_all_networks": True,
        "third_party_instance_id": "irc",
    }
    for _ in range(2):  # filtered searches are never cached
        r = await client.post(
            "/_matrix/client/v3/publicRooms",
            params={"server": REMOTE},
            json=body,
            headers=auth_header(token),
        )
        assert r.status_code == 200, r.text
        assert [room["room_id"] for room in r.json()["chunk"]] == ["!room1:remote.test"]
        assert r.json()["next_batch"] == "1"
    assert directory.calls == [("POST", body), ("POST", body)]


async def test_errors(
    served: tuple[Homeserver, httpx.AsyncClient, str], directory: FakeDirectory
) -> None:
    _, client, token = served
    path = "/_matrix/client/v3/publicRooms"
    r = await client.get(path, params={"server": "unreachable.test"})
    assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN")
    r = await client.get(path, params={"server": "not a server!"})
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = await client.get(path, params={"server": REMOTE, "limit": "-1"})
    assert r.status_code == 400
    for junk in ({"chunk": "no"}, ["a list"], {"rooms": []}):
        directory.answer = junk
        r = await client.post(
            path, params={"server": REMOTE}, json={"limit": 3}, headers=auth_header(token)
        )
        assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN"), junk
    # Entries that are not rooms are left out; the rest stands.
    directory.answer = {"chunk": [{"room_id": "!a:remote.test"}, "junk", {"name": "no id"}]}
    r = await client.post(path, params={"server": REMOTE}, json={}, headers=auth_header(token))
    assert r.status_code == 200 and r.json()["chunk"] == [{"room_id": "!a:remote.test"}]


async def test_federation_off_refuses_other_servers(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url, federation={"enabled": False})
    async with serve(config) as (hs, client):
        assert hs.remote_directories is None
        r = await client.get("/_matrix/client/v3/publicRooms", params={"server": REMOTE})
        assert (r.status_code, r.json()["errcode"]) == (400, "M_UNKNOWN")
        r = await client.get("/_matrix/client/v3/publicRooms", params={"server": "test"})
        assert r.status_code == 200, r.text


async def test_remote_that_cannot_search_is_filtered_here(
    served: tuple[Homeserver, httpx.AsyncClient, str], directory: FakeDirectory
) -> None:
    _, client, token = served
    directory.can_search = False
    body = {"limit": 1, "filter": {"generic_search_term": "CATS"}}
    r = await client.post(
        "/_matrix/client/v3/publicRooms",
        params={"server": REMOTE},
        json=body,
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"chunk": [ROOMS[1]]}
    assert directory.calls == [
        (
            "POST",
            {"include_all_networks": False, "limit": 1, "filter": {"generic_search_term": "CATS"}},
        ),
        ("GET", {"include_all_networks": "false"}),
    ]
