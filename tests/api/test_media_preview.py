"""URL previews: OpenGraph from a real local HTTP server; private addresses refused (SSRF)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from homeserver.net.addresses import AddressPolicy, is_public
from homeserver.net.outbound import Outbound
from media_repo.preview import parse_opengraph
from tests.api.test_media import MEDIA, path_of
from tests.conftest import make_config
from tests.helpers import FakeResolver, auth_header, register, serve
from tests.openapi_schema import assert_response_matches
from tests.unit.test_thumbnailer import make_image

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
PREVIEW = f"{MEDIA}/preview_url"

PAGE = b"""<!doctype html><html><head>
<title>Fallback title</title>
<meta property="og:title" content="A &amp; B">
<meta property="og:description" content="What this page is about">
<meta property="og:image" content="/picture.png">
<meta property="og:image:width" content="9999">
<meta name="description" content="ignored: og:description wins">
</head><body><p>body</p></body></html>"""

Handler = Callable[[str], tuple[int, dict[str, str], bytes] | None]


class LocalSite:
    """A tiny HTTP/1.1 server on 127.0.0.1: answers each path from ``routes``."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hang: set[str] = set()
        self.requests: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.requests.append(head.decode(errors="replace"))
            if path in self.hang:
                await asyncio.sleep(30)
            status, headers, body = self.routes.get(path, (404, {}, b"not found"))
            lines = [
                f"HTTP/1.1 {status} X",
                f"Content-Length: {len(body)}",
                "Connection: close",
                *(f"{k}: {v}" for k, v in headers.items()),
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


@pytest.fixture
async def site() -> AsyncIterator[LocalSite]:
    server = LocalSite()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _serve(tmp_path: Path, db_url: str, allow: tuple[str, ...] = (), **preview: Any) -> Any:
    return serve(
        make_config(
            tmp_path,
            db_url,
            media={"url_preview": {"enabled": True, **preview}},
            outbound={"allow_addresses": list(allow)},
        )
    )


@SQLITE
async def test_disabled_by_default(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    response = await client.get(
        PREVIEW, params={"url": "https://example.org"}, headers=auth_header(token)
    )
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert "disabled" in response.json()["error"]


@SQLITE
async def test_open_graph_and_image(tmp_path: Path, db_url: str, site: LocalSite) -> None:
    site.routes["/page"] = (200, {"Content-Type": "text/html; charset=utf-8"}, PAGE)
    site.routes["/moved"] = (302, {"Location": "/page"}, b"")
    picture = make_image("PNG", 64, 48)
    site.routes["/picture.png"] = (200, {"Content-Type": "image/png"}, picture)
    async with _serve(tmp_path, db_url, allow=("127.0.0.1/32",)) as (_, client):
        _, token = await register(client, "alice")
        response = await client.get(
            PREVIEW, params={"url": site.url("/moved"), "ts": "1"}, headers=auth_header(token)
        )
        assert response.status_code == 200, response.text
        og = response.json()
        assert_response_matches("GET", PREVIEW, 200, og)
        assert og["og:title"] == "A & B"
        assert og["og:description"] == "What this page is about"
        assert (og["og:image:width"], og["og:image:height"]) == (64, 48)
        assert (og["og:image:type"], og["matrix:image:size"]) == ("image/png", len(picture))
        image = await client.get(
            f"{MEDIA}/download/{path_of(og['og:image'])}", headers=auth_header(token)
        )
        assert image.content == picture
        assert "Host: 127.0.0.1:" in site.requests[0]
        # Cached: a second preview fetches nothing.
        count = len(site.requests)
        again = await client.get(
            PREVIEW, params={"url": site.url("/moved")}, headers=auth_header(token)
        )
        assert again.json() == og and len(site.requests) == count


@SQLITE
async def test_private_addresses_refused(tmp_path: Path, db_url: str, site: LocalSite) -> None:
    site.routes["/page"] = (200, {"Content-Type": "text/html"}, PAGE)
    site.routes["/to-private"] = (302, {"Location": "http://10.0.0.1/"}, b"")
    site.routes["/to-loopback"] = (302, {"Location": "http://[::1]:1/"}, b"")
    async with _serve(tmp_path, db_url) as (_, client):
        _, token = await register(client, "alice")
        for url in [
            site.url("/page"),
            f"http://localhost:{site.port}/page",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fe80::1]/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://2130706433/",
            "http://127.1/",
            "http://224.0.0.1/",
            "http://[64:ff9b::a00:1]/",
        ]:
            response = await client.get(PREVIEW, params={"url": url}, headers=auth_header(token))
            assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN"), url
        assert site.requests == []  # nothing reached the private server
    async with _serve(tmp_path, db_url, allow=("127.0.0.1/32",)) as (_, client):
        # Allowed to the first hop, but a redirect to a private address is checked again.
        for path in ("/to-private", "/to-loopback"):
            response = await client.get(
                PREVIEW, params={"url": site.url(path)}, headers=auth_header(token)
            )
            assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")


@SQLITE
async def test_names_are_checked_and_connected_by_address(
    tmp_path: Path, db_url: str, site: LocalSite
) -> None:
    site.routes["/page"] = (200, {"Content-Type": "text/html"}, PAGE)
    site.routes["/away"] = (302, {"Location": f"http://inside.test:{site.port}/page"}, b"")
    dns = FakeResolver({"site.test": [["127.0.0.1"]], "inside.test": [["127.0.0.2"]]})
    config = make_config(
        tmp_path,
        db_url,
        media={"url_preview": {"enabled": True}},
        outbound={"allow_addresses": ["127.0.0.1/32"]},
    )
    outbound = Outbound(AddressPolicy(config.outbound.allow_addresses), dns)
    async with serve(config, outbound=outbound) as (_, client):
        _, token = await register(client, "alice")
        url = f"http://site.test:{site.port}/page"
        response = await client.get(PREVIEW, params={"url": url}, headers=auth_header(token))
        assert response.status_code == 200 and response.json()["og:title"] == "A & B"
        assert f"Host: site.test:{site.port}" in site.requests[0].splitlines()
        # A redirect to a name of a refused address: refused before any connection.
        url = f"http://site.test:{site.port}/away"
        response = await client.get(PREVIEW, params={"url": url}, headers=auth_header(token))
        assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
        assert dns.calls[-2:] == ["site.test", "inside.test"]  # then no connection


@SQLITE
async def test_bad_urls(tmp_path: Path, db_url: str) -> None:
    async with _serve(tmp_path, db_url) as (_, client):
        _, token = await register(client, "alice")
        response = await client.get(PREVIEW, headers=auth_header(token))
        assert (response.status_code, response.json()["errcode"]) == (400, "M_MISSING_PARAM")
        for url in (
            "ftp://example.org/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "http://",
            "not a url",
            "http://user:pw@example.org/",
            "http://example.org:99999/",
            "https://example.org/" + "a" * 3000,
        ):
            response = await client.get(PREVIEW, params={"url": url}, headers=auth_header(token))
            assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM"), (
                url
            )
        response = await client.get(
            PREVIEW, params={"url": "https://example.org", "ts": "x"}, headers=auth_header(token)
        )
        assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")


@SQLITE
async def test_bounded_size_and_time(tmp_path: Path, db_url: str, site: LocalSite) -> None:
    big = PAGE.replace(b"<body>", b"<body>" + b"x" * 3_000_000)
    site.routes["/big"] = (200, {"Content-Type": "text/html"}, big)
    site.routes["/slow"] = (200, {"Content-Type": "text/html"}, PAGE)
    site.hang.add("/slow")
    site.routes["/gone"] = (500, {}, b"")
    site.routes["/file"] = (200, {"Content-Type": "application/zip"}, b"PK")
    async with _serve(
        tmp_path, db_url, allow=("127.0.0.0/8",), max_bytes=65536, timeout_ms=2000
    ) as (_, client):
        _, token = await register(client, "alice")
        response = await client.get(
            PREVIEW, params={"url": site.url("/big")}, headers=auth_header(token)
        )
        assert response.status_code == 200 and response.json()["og:title"] == "A & B"
        response = await client.get(
            PREVIEW, params={"url": site.url("/slow")}, headers=auth_header(token)
        )
        assert (response.status_code, response.json()["errcode"]) == (504, "M_UNKNOWN")
        response = await client.get(
            PREVIEW, params={"url": site.url("/gone")}, headers=auth_header(token)
        )
        assert (response.status_code, response.json()["errcode"]) == (502, "M_UNKNOWN")
        response = await client.get(
            PREVIEW, params={"url": site.url("/file")}, headers=auth_header(token)
        )
        assert (response.status_code, response.json()) == (200, {})


def test_address_classes() -> None:
    for public in ("8.8.8.8", "2606:4700:4700::1111", "1.1.1.1"):
        assert is_public(ipaddress.ip_address(public)), public
    for private in (
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "::1",
        "::",
        "fc00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",
        "64:ff9b::7f00:1",
        "2001::8000:ffff:80ff:fffe",
    ):
        assert not is_public(ipaddress.ip_address(private)), private


def test_open_graph_parsing() -> None:
    og = parse_opengraph(b"<html><head><title>  Only\n a title </title></head></html>", "text/html")
    assert og == {"og:title": "Only a title"}
    og = parse_opengraph(
        "<meta property='og:title' content='caf\xe9'>".encode("latin-1"),
        "text/html; charset=latin-1",
    )
    assert og == {"og:title": "caf\xe9"}
    assert parse_opengraph(b"\xff\xfe<<<>>>", "text/html; charset=bogus") == {}
