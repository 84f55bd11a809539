"""Other servers' media for our clients: fetched over federation, cached, thumbnailed here.

The remote is a real HTTP server on loopback (aiohttp) that answers as Synapse and as a
broken server would; the signed federation request to it goes through ``request_raw``,
sent here over plain HTTP (discovery, TLS and X-Matrix have their own tests). Redirects
(``Location``) go through the homeserver's own outbound transport, loopback allowed.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web
from PIL import Image

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from homeserver.federation.client import FederationError
from homeserver.federation.discovery import ServerResolver, WellKnownResolver
from homeserver.net.addresses import AddressPolicy
from homeserver.net.outbound import Outbound, OutboundResponse, Reason
from tests.api.admin_helpers import call, make_admin, refused_to_non_admins
from tests.conftest import make_config
from tests.federation_helpers import _no_dns, _no_srv, _no_well_known
from tests.helpers import auth_header, register, serve
from tests.push_servers import LocalHTTP
from tests.unit.test_thumbnailer import make_image

REMOTE = "remote.test"
DOWNLOAD = "/_matrix/client/v1/media/download"
THUMBNAIL = "/_matrix/client/v1/media/thumbnail"
BOUNDARY = "6d2e0a3f9c"


@dataclass(frozen=True)
class Canned:
    """An answer the fake remote gives each time it is asked (aiohttp sends a Response once)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def response(self) -> web.Response:
        return web.Response(status=self.status, headers=self.headers, body=self.body)


def multipart(meta: bytes, part_headers: dict[str, str], body: bytes) -> Canned:
    head = "".join(f"{k}: {v}\r\n" for k, v in part_headers.items()).encode()
    payload = (
        f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n".encode()
        + meta
        + f"\r\n--{BOUNDARY}\r\n".encode()
        + head
        + b"\r\n"
        + body
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return Canned(200, {"Content-Type": f"multipart/mixed; boundary={BOUNDARY}"}, payload)


def error(status: int, errcode: str | None) -> Canned:
    body = {"errcode": errcode, "error": "no"} if errcode else {}
    return Canned(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


class FakeMediaServer:
    """Answers /federation/v1/media/download/{mediaId} per media ID as the test sets it."""

    def __init__(self) -> None:
        self.files: dict[str, Canned] = {}
        self.legacy: dict[str, Canned] = {}
        self.plain: dict[str, tuple[str, bytes]] = {}
        self.calls: list[str] = []
        self.queries: list[dict[str, str]] = []
        self.delay_s = 0.0
        app = web.Application()
        app.router.add_get("/_matrix/federation/v1/media/download/{media_id}", self._download)
        app.router.add_get("/_matrix/media/v3/download/{server}/{media_id}", self._legacy)
        app.router.add_get("/plain/{name}", self._plain)
        self.http = LocalHTTP(app)

    async def _download(self, request: web.Request) -> web.Response:
        media_id = request.match_info["media_id"]
        self.calls.append(f"federation {media_id}")
        self.queries.append(dict(request.query))
        await asyncio.sleep(self.delay_s)
        return self.files.get(media_id, error(404, "M_NOT_FOUND")).response()

    async def _legacy(self, request: web.Request) -> web.Response:
        media_id = request.match_info["media_id"]
        self.calls.append(f"legacy {media_id} {request.query_string}")
        return self.legacy.get(media_id, error(404, "M_NOT_FOUND")).response()

    async def _plain(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.append(f"plain {name}")
        content_type, body = self.plain[name]
        return web.Response(body=body, headers={"Content-Type": content_type})


class PlainFederation:
    """``request_raw`` of FederationClient, to the fake remote over plain HTTP."""

    def __init__(self, base_url: str, reachable: set[str]) -> None:
        self.base_url = base_url
        self.reachable = reachable

    async def request_raw(
        self,
        destination: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        content: Any = None,
        max_bytes: int = 1 << 24,
    ) -> OutboundResponse:
        if destination not in self.reachable:
            raise FederationError(destination, "unreachable", reason=Reason.UNREACHABLE)
        url = self.base_url + path + ("?" + urlencode(query) if query else "")
        async with httpx.AsyncClient() as http:
            response = await http.request(method, url)
        if len(response.content) > max_bytes:
            raise FederationError(destination, "too large", reason=Reason.TOO_LARGE)
        return OutboundResponse(
            url=url,
            status_code=response.status_code,
            headers=response.headers,
            body=response.content,
            truncated=False,
        )


@pytest.fixture
async def remote() -> AsyncIterator[FakeMediaServer]:
    server = FakeMediaServer()
    async with server.http:
        yield server


@pytest.fixture
async def served(
    tmp_path: Path, db_url: str, clock: FakeClock, remote: FakeMediaServer
) -> AsyncIterator[tuple[Homeserver, httpx.AsyncClient, str]]:
    config = make_config(tmp_path, db_url, media={"max_upload_bytes": 50_000})
    async with serve(
        config,
        clock,
        outbound=Outbound(AddressPolicy(allow=["127.0.0.1/32"])),
        server_resolver=ServerResolver(WellKnownResolver(_no_well_known, clock), _no_srv),
    ) as (hs, client):
        fed = PlainFederation(remote.http.base_url, {REMOTE})
        assert hs.remote_media_fetcher is not None
        hs.remote_media_fetcher._client = fed  # the signed transport, over plain HTTP
        _, token = await register(client, "alice")
        yield hs, client, token


def png(width: int, height: int) -> bytes:
    return make_image("PNG", width, height)


async def test_fetch_cache_and_thumbnail(
    served: tuple[Homeserver, httpx.AsyncClient, str], remote: FakeMediaServer
) -> None:
    hs, client, token = served
    image = png(300, 200)
    remote.files["pic"] = multipart(
        b"{}",
        {"Content-Type": "image/png", "Content-Disposition": 'inline; filename="a.png"'},
        image,
    )
    r = await client.get(f"{DOWNLOAD}/{REMOTE}/pic", headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert r.content == image
    assert r.headers["content-type"] == "image/png"
    assert "a.png" in r.headers["content-disposition"]
    # Served from the cache afterwards: the remote is not asked again.
    r = await client.get(f"{DOWNLOAD}/{REMOTE}/pic", headers=auth_header(token))
    assert r.status_code == 200 and r.content == image
    r = await client.get(
        f"{THUMBNAIL}/{REMOTE}/pic",
        params={"width": 32, "height": 32, "method": "crop"},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.size == (32, 32)
    assert remote.calls == ["federation pic"]
    assert await hs.media._store.get_remote_media(REMOTE, "pic") is not None


async def test_concurrent_requests_fetch_once(
    served: tuple[Homeserver, httpx.AsyncClient, str], remote: FakeMediaServer
) -> None:
    _, client, token = served
    remote.files["slow"] = multipart(b"{}", {"Content-Type": "text/plain"}, b"hello")
    remote.delay_s = 0.3
    responses = await asyncio.gather(
        *(client.get(f"{DOWNLOAD}/{REMOTE}/slow", headers=auth_header(token)) for _ in range(4))
    )
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.content == b"hello" for r in responses)
    assert remote.calls == ["federation slow"]


async def test_location_redirect_is_followed(
    served: tuple[Homeserver, httpx.AsyncClient, str], remote: FakeMediaServer
) -> None:
    _, client, token = served
    remote.plain["doc"] = ("application/pdf", b"%PDF-1.4 pretend")
    remote.files["moved"] = multipart(b"{}", {"Location": f"{remote.http.base_url}/plain/doc"}, b"")
    r = await client.get(f"{DOWNLOAD}/{REMOTE}/moved", headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert r.content == b"%PDF-1.4 pretend"
    assert r.headers["content-type"] == "application/pdf"
    assert remote.calls == ["federation moved", "plain doc"]


async def test_redirect_to_a_refused_address_is_bad_gateway(
    served: tuple[Homeserver, httpx.AsyncClient, str], remote: FakeMediaServer
) -> None:
    _, client, token = served
    remote.files["evil"] = multipart(b"{}", {"Location": "http://10.0.0.1/secret"}, b"")
    r = await client.get(f"{DOWNLOAD}/{REMOTE}/evil", headers=auth_header(token))
    assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN")


async def test_legacy_fallback_only_on_unknown_endpoint(
    served: tuple[Homeserver, httpx.AsyncClient, str], remote: FakeMediaServer
) -> None:
    _, client, token = served
    remote.files["old"] = error(404, "M_UNRECOGNIZED")
    remote.legacy["old"] = Canned(
        200,
        {"Content-Type": "text/plain", "Content-Disposition": "attachment; filename=o.txt"},
        b"old bytes",
    )
    r = await client.get(f"{DOWNLOAD}/{REMOTE}/old", headers=auth_header(token))
    assert r.status_code == 200, r.text
    assert r.content == b"old bytes"
    assert "o.txt" in r.headers["content-disposition"]
    assert remote.calls[0] == "federation old"
    assert remote.calls[1].startswith("legacy old ") and "allow_remote=false" in remote.calls[1]
    # A plain M_NOT_FOUND is an answer: no fallback.
    remote.calls.clear()
    r = await client.get(f"{DOWNLOAD}/{REMOTE}/gone", headers=auth_header(token))
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert remote.calls == ["federation gone"]


async def test_errors(
    served: tuple[Homeserver, httpx.AsyncClient, str], remote: FakeMediaServer
) -> None:
    _, client, token = served
    remote.files["big"] = multipart(b"{}", {"Content-Type": "text/plain"}, b"x" * 60_000)
    remote.files["huge"] = multipart(b"{}", {"Content-Type": "text/plain"}, b"x" * 200_000)
    remote.files["junk"] = Canned(
        200, {"Content-Type": "multipart/mixed; boundary=zz"}, b"not multipart at all"
    )
    remote.files["notmulti"] = Canned(200, {"Content-Type": "text/plain"}, b"{}")
    remote.files["badmeta"] = multipart(b"[1", {"Content-Type": "text/plain"}, b"x")
    remote.files["pending"] = error(504, "M_NOT_YET_UPLOADED")
    remote.files["broken"] = error(500, "M_UNKNOWN")
    cases = [
        (f"{REMOTE}/big", 502, "M_TOO_LARGE"),  # within the envelope's slack, over the limit
        (f"{REMOTE}/huge", 502, "M_TOO_LARGE"),  # refused while reading
        (f"{REMOTE}/junk", 502, "M_UNKNOWN"),
        (f"{REMOTE}/notmulti", 502, "M_UNKNOWN"),
        (f"{REMOTE}/badmeta", 502, "M_UNKNOWN"),
        (f"{REMOTE}/pending", 504, "M_NOT_YET_UPLOADED"),
        (f"{REMOTE}/broken", 502, "M_UNKNOWN"),
        ("unreachable.test/x", 502, "M_UNKNOWN"),
    ]
    for path, status, errcode in cases:
        r = await client.get(f"{DOWNLOAD}/{path}", headers=auth_header(token))
        assert (r.status_code, r.json().get("errcode")) == (status, errcode), (path, r.text)
    # Nothing was cached of a failure: the remote is asked again.
    remote.calls.clear()
    await client.get(f"{DOWNLOAD}/{REMOTE}/broken", headers=auth_header(token))
    assert remote.calls == ["federation broken"]
    # allow_remote=false asks nobody.
    r = await client.get(
        f"{DOWNLOAD}/{REMOTE}/broken", params={"allow_remote": "false"}, headers=auth_header(token)
    )
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    # The unauthenticated legacy path does not fetch remote media (spec 1.11 freeze).
    r = await client.get(f"/_matrix/media/v3/download/{REMOTE}/big")
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")


async def test_remote_thumbnail_of_non_image_is_an_error(
    served: tuple[Homeserver, httpx.AsyncClient, str], remote: FakeMediaServer
) -> None:
    _, client, token = served
    remote.files["txt"] = multipart(b"{}", {"Content-Type": "text/plain"}, b"words")
    r = await client.get(
        f"{THUMBNAIL}/{REMOTE}/txt", params={"width": 32, "height": 32}, headers=auth_header(token)
    )
    assert r.status_code == 400, r.text
    assert r.json()["errcode"] == "M_UNKNOWN"


async def test_federation_client_request_raw_unreachable(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """The real signed client: a server that does not resolve is a FederationError."""
    config = make_config(tmp_path, db_url)
    async with serve(
        config,
        clock,
        outbound=Outbound(AddressPolicy(), resolver=_no_dns),
        server_resolver=ServerResolver(WellKnownResolver(_no_well_known, clock), _no_srv),
    ) as (hs, client):
        _, token = await register(client, "bob")
        r = await client.get(f"{DOWNLOAD}/nowhere.test/abc", headers=auth_header(token))
        assert (r.status_code, r.json()["errcode"]) == (502, "M_UNKNOWN")
        with pytest.raises(FederationError):
            await hs.federation_client.request_raw("nowhere.test", "GET", "/x")


async def test_timeout_is_forwarded_and_bounded(
    served: tuple[Homeserver, httpx.AsyncClient, str], remote: FakeMediaServer
) -> None:
    hs, client, token = served
    remote.files["t"] = multipart(b"{}", {"Content-Type": "text/plain"}, b"t")
    r = await client.get(
        f"{DOWNLOAD}/{REMOTE}/t", params={"timeout_ms": 1234}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    remote.files["u"] = multipart(b"{}", {"Content-Type": "text/plain"}, b"u")
    r = await client.get(
        f"{DOWNLOAD}/{REMOTE}/u", params={"timeout_ms": 10**9}, headers=auth_header(token)
    )
    assert r.status_code == 200, r.text
    assert remote.queries == [
        {"timeout_ms": "1234"},
        {"timeout_ms": str(hs.config.media.max_download_wait_ms)},
    ]
    r = await client.get(
        f"{DOWNLOAD}/{REMOTE}/v", params={"timeout_ms": "soon"}, headers=auth_header(token)
    )
    assert (r.status_code, r.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_legacy_paths_fetch_when_unauthenticated_downloads_are_allowed(
    tmp_path: Path, db_url: str, clock: FakeClock, remote: FakeMediaServer
) -> None:
    config = make_config(
        tmp_path,
        db_url,
        media={"max_upload_bytes": 50_000, "allow_unauthenticated_downloads": True},
    )
    async with serve(
        config,
        clock,
        outbound=Outbound(AddressPolicy(allow=["127.0.0.1/32"])),
        server_resolver=ServerResolver(WellKnownResolver(_no_well_known, clock), _no_srv),
    ) as (hs, client):
        assert hs.remote_media_fetcher is not None
        hs.remote_media_fetcher._client = PlainFederation(remote.http.base_url, {REMOTE})
        image = png(64, 64)
        remote.files["p"] = multipart(b"{}", {"Content-Type": "image/png"}, image)
        r = await client.get(f"/_matrix/media/v3/download/{REMOTE}/p")
        assert r.status_code == 200 and r.content == image
        r = await client.get(
            f"/_matrix/media/v3/thumbnail/{REMOTE}/p",
            params={"width": 32, "height": 32, "method": "crop"},
        )
        assert r.status_code == 200, r.text
        assert remote.calls == ["federation p"]


async def test_purge_media_cache_and_retention_forget_unasked_remote_media(
    served: tuple[Homeserver, httpx.AsyncClient, str], remote: FakeMediaServer, clock: FakeClock
) -> None:
    """POST /_synapse/admin/v1/purge_media_cache deletes cached remote media not asked for
    since `before_ts` (rows, content, thumbnails); the next download fetches it again. The
    retention job purges through the same code."""
    hs, client, token = served
    image = png(64, 64)
    remote.files["old"] = multipart(b"{}", {"Content-Type": "image/png"}, image)
    remote.files["new"] = multipart(b"{}", {"Content-Type": "image/png"}, png(40, 40))
    r = await client.get(f"{DOWNLOAD}/{REMOTE}/old", headers=auth_header(token))
    assert r.status_code == 200, r.text
    r = await client.get(
        f"{THUMBNAIL}/{REMOTE}/old",
        params={"width": 32, "height": 32, "method": "crop"},
        headers=auth_header(token),
    )
    assert r.status_code == 200, r.text
    clock.advance(60_000)
    cutoff = clock.now_ms()
    clock.advance(60_000)
    r = await client.get(f"{DOWNLOAD}/{REMOTE}/new", headers=auth_header(token))
    assert r.status_code == 200, r.text
    await refused_to_non_admins(
        client, token, [("POST", f"/v1/purge_media_cache?before_ts={cutoff}", None)]
    )
    admin = await make_admin(hs, client)
    await call(client, admin, "POST", "/v1/purge_media_cache", None, 400, "M_MISSING_PARAM")
    assert await call(client, admin, "POST", f"/v1/purge_media_cache?before_ts={cutoff}") == {
        "deleted": 1
    }
    assert await hs.media._store.get_remote_media(REMOTE, "old") is None
    assert await hs.media._store.get_remote_media(REMOTE, "new") is not None
    r = await client.get(f"{DOWNLOAD}/{REMOTE}/old", headers=auth_header(token))
    assert r.status_code == 200 and r.content == image
    assert remote.calls == ["federation old", "federation new", "federation old"]
    # The retention job's hook is the same deletion.
    assert await hs.admin_media.purge_not_accessed_since(clock.now_ms() + 1) == 2
    assert await hs.media._store.get_remote_media(REMOTE, "new") is None
