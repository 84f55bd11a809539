"""Media uploads and downloads: round trips, headers, ranges, limits, quotas, pending uploads."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from homeserver.app import Homeserver
from homeserver.core.clock import FakeClock
from media_repo import backends
from tests.conftest import make_config
from tests.helpers import assert_errors, auth_header, register, serve
from tests.openapi_schema import assert_response_matches

UPLOAD = "/_matrix/media/v3/upload"
CREATE = "/_matrix/media/v1/create"
MEDIA = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/v3"


async def upload(
    client: httpx.AsyncClient,
    token: str,
    data: bytes | AsyncIterator[bytes],
    content_type: str | None = "application/octet-stream",
    filename: str | None = None,
) -> str:
    headers = auth_header(token)
    if content_type is not None:
        headers["Content-Type"] = content_type
    params = {"filename": filename} if filename is not None else {}
    response = await client.post(UPLOAD, headers=headers, content=data, params=params)
    assert response.status_code == 200, response.text
    assert_response_matches("POST", UPLOAD, 200, response.json())
    uri: str = response.json()["content_uri"]
    return uri


def path_of(mxc: str) -> str:
    assert mxc.startswith("mxc://")
    return mxc[len("mxc://") :]


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_round_trip_keeps_name_and_type(client: httpx.AsyncClient, hs: Homeserver) -> None:
    user_id, token = await register(client, "alice")
    data = os.urandom(1024)
    mxc = await upload(client, token, data, "image/png", "holiday photo.png")
    assert mxc.startswith("mxc://test/")
    response = await client.get(f"{MEDIA}/download/{path_of(mxc)}", headers=auth_header(token))
    assert response.status_code == 200
    assert response.content == data
    sha = hashlib.sha256(data).hexdigest()
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"] == 'inline; filename="holiday photo.png"'
    assert response.headers["content-length"] == "1024"
    assert response.headers["etag"] == f'"{sha}"'
    assert response.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert response.headers["content-security-policy"].startswith("sandbox;")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["accept-ranges"] == "bytes"
    head = await client.head(f"{MEDIA}/download/{path_of(mxc)}", headers=auth_header(token))
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "1024")
    # The metadata: uploader, size, type, hash.
    media = await hs.media.get_media(_mxc(mxc), timeout_ms=0)
    assert (media.user_id, media.size, media.content_type, media.sha256) == (
        user_id,
        1024,
        "image/png",
        sha,
    )
    # A file name in the path replaces the stored one; nio's empty one does not.
    response = await client.get(
        f"{MEDIA}/download/{path_of(mxc)}/other%20name.png", headers=auth_header(token)
    )
    assert response.headers["content-disposition"] == 'inline; filename="other name.png"'
    response = await client.get(f"{MEDIA}/download/{path_of(mxc)}/", headers=auth_header(token))
    assert response.headers["content-disposition"] == 'inline; filename="holiday photo.png"'
    assert response.content == data


def _mxc(uri: str) -> Any:
    from media_repo.mxc import MxcUri

    return MxcUri.parse(uri)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_ten_megabytes_streamed(client: httpx.AsyncClient, hs: Homeserver) -> None:
    _, token = await register(client, "alice")
    data = os.urandom(10 * 1024 * 1024)
    # A chunked body without Content-Length, as a streaming client sends it.
    mxc = await upload(client, token, chunks(data))
    response = await client.get(f"{MEDIA}/download/{path_of(mxc)}", headers=auth_header(token))
    assert response.status_code == 200
    assert len(response.content) == len(data)
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()
    assert response.headers["content-disposition"] == "attachment"  # octet-stream, no name
    # Nothing is left in the spool.
    assert list((hs.config.data_path / "media" / "tmp").iterdir()) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_identical_content_is_stored_once(client: httpx.AsyncClient, hs: Homeserver) -> None:
    _, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    data = b"the same bytes" * 100
    first = await upload(client, alice, data, "text/plain", "a.txt")
    second = await upload(client, bob, data, "application/octet-stream", "b.bin")
    assert first != second
    sha = hashlib.sha256(data).hexdigest()
    stored = [p for p in (hs.config.data_path / "media" / "content").rglob("*") if p.is_file()]
    assert stored == [hs.config.data_path / "media" / "content" / sha[:2] / sha[2:4] / sha]
    # Each keeps its own name and type.
    r1 = await client.get(f"{MEDIA}/download/{path_of(first)}", headers=auth_header(bob))
    r2 = await client.get(f"{MEDIA}/download/{path_of(second)}", headers=auth_header(alice))
    assert r1.content == r2.content == data
    assert r1.headers["content-type"].startswith("text/plain")
    assert r1.headers["content-disposition"] == 'inline; filename="a.txt"'
    assert r2.headers["content-disposition"] == 'attachment; filename="b.bin"'


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_unsafe_types_are_attachments(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    cases = [
        ("text/html", "page.html", 'attachment; filename="page.html"'),
        ("image/svg+xml", "x.svg", 'attachment; filename="x.svg"'),
        ("application/javascript", None, "attachment"),
        ("image/jpeg", "été.jpg", "inline; filename*=utf-8''%C3%A9t%C3%A9.jpg"),
        ("text/plain", 'say "hi".txt', "inline; filename*=utf-8''say%20%22hi%22.txt"),
    ]
    for content_type, filename, disposition in cases:
        mxc = await upload(client, token, b"<script>alert(1)</script>", content_type, filename)
        response = await client.get(f"{MEDIA}/download/{path_of(mxc)}", headers=auth_header(token))
        assert response.headers["content-disposition"] == disposition, content_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in response.headers["content-security-policy"]
    # No type at all: application/octet-stream (spec v1.12).
    mxc = await upload(client, token, b"x", None)
    response = await client.get(f"{MEDIA}/download/{path_of(mxc)}", headers=auth_header(token))
    assert response.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_ranges_and_etags(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    data = bytes(range(256)) * 4
    mxc = await upload(client, token, data)
    url = f"{MEDIA}/download/{path_of(mxc)}"
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    async def get(**headers: str) -> httpx.Response:
        return await client.get(url, headers={**auth_header(token), **headers})

    r = await get(Range="bytes=10-19")
    assert (r.status_code, r.content) == (206, data[10:20])
    assert r.headers["content-range"] == "bytes 10-19/1024"
    assert r.headers["content-length"] == "10"
    r = await get(Range="bytes=1000-")
    assert (r.status_code, r.content) == (206, data[1000:])
    r = await get(Range="bytes=-24")
    assert (r.status_code, r.content) == (206, data[-24:])
    r = await get(Range="bytes=1000-5000")  # past the end: up to the end
    assert (r.status_code, r.content) == (206, data[1000:])
    r = await get(Range="bytes=2000-")
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */1024"
    assert r.json()["errcode"] == "M_INVALID_PARAM"
    for ignored in ("bytes=0-1,5-6", "lines=1-2", "bytes=5-1", "bytes=x-"):
        r = await get(Range=ignored)
        assert (r.status_code, r.content) == (200, data), ignored
    r = await get(Range="bytes=0-9", **{"If-Range": '"other"'})
    assert (r.status_code, r.content) == (200, data)
    r = await get(Range="bytes=0-9", **{"If-Range": etag})
    assert r.status_code == 206
    r = await get(**{"If-None-Match": etag})
    assert (r.status_code, r.content) == (304, b"")
    assert r.headers["etag"] == etag and "immutable" in r.headers["cache-control"]
    r = await get(**{"If-None-Match": f'"nope", W/{etag}'})
    assert r.status_code == 304
    r = await get(**{"If-None-Match": '"nope"'})
    assert r.status_code == 200
    # Empty content: a download is empty; no range can be satisfied.
    empty = await upload(client, token, b"")
    r = await client.get(f"{MEDIA}/download/{path_of(empty)}", headers=auth_header(token))
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")
    r = await client.get(
        f"{MEDIA}/download/{path_of(empty)}", headers={**auth_header(token), "Range": "bytes=0-"}
    )
    assert r.status_code == 416


async def test_downloads_take_one_thread_hop_per_chunk(
    client: httpx.AsyncClient, hs: Homeserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = await register(client, "alice")
    data = os.urandom(5000)
    mxc = await upload(client, token, data)
    url = f"{MEDIA}/download/{path_of(mxc)}"
    hops: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = await run_sync(fn, *args, **kwargs)
        hops.append(fn.__name__)  # once done: a call cancelled before it ran is no hop
        return result

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)

    async def get(expected: bytes, **headers: str) -> list[str]:
        hops.clear()
        response = await client.get(url, headers={**auth_header(token), **headers})
        assert response.content == expected
        assert response.headers["content-length"] == str(len(expected))
        return hops[:]

    # One chunk: open, seek, read and close in a single hop.
    assert await get(data) == ["_open_and_read"]
    assert await get(data[4000:], Range="bytes=4000-") == ["_open_and_read"]
    # Several: one hop per chunk, the last read closing the file.
    monkeypatch.setattr(backends, "READ_CHUNK_BYTES", 1000)
    assert await get(data) == ["_open_and_read"] + ["_read_on"] * 4
    assert await get(data[1500:3500], Range="bytes=1500-3499") == ["_open_and_read", "_read_on"]
    assert await get(data[999:1001], Range="bytes=999-1000") == ["_open_and_read"]
    assert await get(data[-1:], Range="bytes=-1") == ["_open_and_read"]
    # A reader that stops early closes the file, even if cancelled.
    key = hs.media.download_blob(await hs.media.get_media(_mxc(mxc), timeout_ms=0), None).key
    for cancelled in (False, True):
        hops.clear()
        reader = cast(AsyncGenerator[bytes, None], hs.media._backend.read(key, 0, len(data) - 1))
        assert await anext(reader) == data[:1000]
        with anyio.CancelScope() as scope:
            if cancelled:
                scope.cancel()
            await reader.aclose()
        assert hops == ["_open_and_read", "close"]


def _config_server(tmp_path: Path, db_url: str, **media: Any) -> Any:
    """A homeserver with these ``media`` options, and a client to it."""
    return serve(make_config(tmp_path, db_url, media=media))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_too_large_refused_before_the_body_is_read(tmp_path: Path, db_url: str) -> None:
    async with _config_server(tmp_path, db_url, max_upload_bytes=1000) as (_, client):
        _, token = await register(client, "alice")
        consumed: list[bytes] = []

        async def body() -> AsyncIterator[bytes]:
            for _ in range(4):
                consumed.append(b"x")
                yield b"x" * 500

        response = await client.post(
            UPLOAD, content=body(), headers={**auth_header(token), "Content-Length": "2000"}
        )
        assert (response.status_code, response.json()["errcode"]) == (413, "M_TOO_LARGE")
        assert consumed == []  # refused on Content-Length alone
        # Without Content-Length the limit holds as the body streams in.
        response = await client.post(UPLOAD, content=body(), headers=auth_header(token))
        assert (response.status_code, response.json()["errcode"]) == (413, "M_TOO_LARGE")
        assert list((tmp_path / "media" / "tmp").iterdir()) == []
        await upload(client, token, b"x" * 1000)  # exactly the limit is fine
        response = await client.get(f"{MEDIA}/config", headers=auth_header(token))
        assert response.json() == {"m.upload.size": 1000}
        assert_response_matches("GET", f"{MEDIA}/config", 200, response.json())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_quota(tmp_path: Path, db_url: str) -> None:
    async with _config_server(tmp_path, db_url, user_quota_bytes=1500) as (_, client):
        _, alice = await register(client, "alice")
        _, bob = await register(client, "bob")
        await upload(client, alice, b"a" * 1000)
        for content in (b"b" * 1000, chunks(b"c" * 1000)):
            response = await client.post(UPLOAD, content=content, headers=auth_header(alice))
            assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
        await upload(client, alice, b"d" * 500)  # exactly the quota
        await upload(client, bob, b"e" * 1500)  # per user
        mxc = (await client.post(CREATE, headers=auth_header(alice))).json()["content_uri"]
        response = await client.put(
            f"{UPLOAD}/{path_of(mxc)}", content=b"f", headers=auth_header(alice)
        )
        assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_create_then_upload(
    client: httpx.AsyncClient, hs: Homeserver, clock: FakeClock
) -> None:
    _, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    response = await client.post(CREATE, headers=auth_header(alice))
    assert response.status_code == 200
    assert_response_matches("POST", CREATE, 200, response.json())
    mxc = response.json()["content_uri"]
    assert response.json()["unused_expires_at"] == clock.now_ms() + 24 * 3600 * 1000
    url = f"{MEDIA}/download/{path_of(mxc)}"
    response = await client.get(url, params={"timeout_ms": "0"}, headers=auth_header(bob))
    assert (response.status_code, response.json()["errcode"]) == (504, "M_NOT_YET_UPLOADED")
    response = await client.put(
        f"{UPLOAD}/{path_of(mxc)}", content=b"bob's", headers=auth_header(bob)
    )
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
    response = await client.put(
        f"{UPLOAD}/{path_of(mxc)}",
        content=b"alice's",
        headers={**auth_header(alice), "Content-Type": "text/plain"},
        params={"filename": "note.txt"},
    )
    assert (response.status_code, response.json()) == (200, {})
    assert_response_matches("PUT", f"{UPLOAD}/{path_of(mxc)}", 200, response.json())
    response = await client.put(
        f"{UPLOAD}/{path_of(mxc)}", content=b"again", headers=auth_header(alice)
    )
    assert (response.status_code, response.json()["errcode"]) == (409, "M_CANNOT_OVERWRITE_MEDIA")
    response = await client.get(url, headers=auth_header(bob))
    assert response.content == b"alice's"
    assert response.headers["content-disposition"] == 'inline; filename="note.txt"'
    # An ID that lapsed, one never created, one of another server.
    lapsed = (await client.post(CREATE, headers=auth_header(alice))).json()["content_uri"]
    clock.advance(24 * 3600 * 1000 + 1)
    await assert_errors(
        client,
        "PUT",
        f"{UPLOAD}/{path_of(lapsed)}",
        [(b"x", 404, "M_NOT_FOUND")],
        headers=auth_header(alice),
    )
    response = await client.get(f"{MEDIA}/download/{path_of(lapsed)}", headers=auth_header(bob))
    assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")
    for path in ("test/neverCreated", "other.example/abc", "test/bad.id", "bad!name/abc"):
        response = await client.put(f"{UPLOAD}/{path}", content=b"x", headers=auth_header(alice))
        expected = (400, "M_INVALID_PARAM") if "bad" in path else (404, "M_NOT_FOUND")
        assert (response.status_code, response.json()["errcode"]) == expected, path


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_pending_upload_limit(tmp_path: Path, db_url: str) -> None:
    async with _config_server(tmp_path, db_url, max_pending_uploads=2) as (_, client):
        _, token = await register(client, "alice")
        first = (await client.post(CREATE, headers=auth_header(token))).json()["content_uri"]
        await client.post(CREATE, headers=auth_header(token))
        response = await client.post(CREATE, headers=auth_header(token))
        assert (response.status_code, response.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert response.json()["retry_after_ms"] > 0
        # Uploading one frees its place.
        await client.put(f"{UPLOAD}/{path_of(first)}", content=b"x", headers=auth_header(token))
        assert (await client.post(CREATE, headers=auth_header(token))).status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_download_waits_for_pending_content(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    mxc = (await client.post(CREATE, headers=auth_header(token))).json()["content_uri"]
    download = asyncio.create_task(
        client.get(
            f"{MEDIA}/download/{path_of(mxc)}",
            params={"timeout_ms": "10000"},
            headers=auth_header(token),
        )
    )
    await asyncio.sleep(0.05)
    assert not download.done()
    response = await client.put(
        f"{UPLOAD}/{path_of(mxc)}", content=b"late", headers=auth_header(token)
    )
    assert response.status_code == 200
    response = await asyncio.wait_for(download, 5)
    assert (response.status_code, response.content) == (200, b"late")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_tokens_required(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    mxc = await upload(client, token, b"secret")
    for method, path in [
        ("POST", UPLOAD),
        ("POST", CREATE),
        ("PUT", f"{UPLOAD}/test/abc"),
        ("GET", f"{MEDIA}/download/{path_of(mxc)}"),
        ("GET", f"{MEDIA}/download/{path_of(mxc)}/name.txt"),
        ("GET", f"{MEDIA}/thumbnail/{path_of(mxc)}?width=1&height=1"),
        ("GET", f"{MEDIA}/config"),
        ("GET", f"{LEGACY}/config"),
        ("GET", f"{MEDIA}/preview_url?url=https://example.org"),
    ]:
        response = await client.request(method, path, content=b"x")
        assert (response.status_code, response.json()["errcode"]) == (401, "M_MISSING_TOKEN"), path
        response = await client.request(
            method, path, content=b"x", headers=auth_header("not-a-token")
        )
        assert (response.status_code, response.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN"), path
    # The access token in the query (nio does this) is accepted.
    response = await client.get(f"{MEDIA}/download/{path_of(mxc)}", params={"access_token": token})
    assert response.content == b"secret"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_bad_ids_and_missing_media(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    cases = [
        ("test/doesNotExist", 404, "M_NOT_FOUND"),
        ("test/has.dot", 400, "M_INVALID_PARAM"),
        ("test/has%20space", 400, "M_INVALID_PARAM"),
        ("test/" + "a" * 256, 400, "M_INVALID_PARAM"),
        ("bad%20server/abc", 400, "M_INVALID_PARAM"),
        # Fetched over federation (tests/api/test_remote_media.py); no such server: 502.
        ("remote.example/abc", 502, "M_UNKNOWN"),
    ]
    for path, status, errcode in cases:
        for url in (f"{MEDIA}/download/{path}", f"{MEDIA}/thumbnail/{path}?width=32&height=32"):
            response = await client.get(url, headers=auth_header(token))
            assert (response.status_code, response.json()["errcode"]) == (status, errcode), url
    response = await client.get(f"{MEDIA}/download/remote.example/abc", headers=auth_header(token))
    assert "remote media" in response.json()["error"]
    response = await client.get(
        f"{MEDIA}/download/remote.example/abc",
        params={"allow_remote": "false"},
        headers=auth_header(token),
    )
    assert response.status_code == 404
    await assert_errors(
        client,
        "GET",
        f"{MEDIA}/download/test/abc?timeout_ms=-1",
        [(b"", 400, "M_INVALID_PARAM")],
        headers=auth_header(token),
    )
    await assert_errors(
        client,
        "GET",
        f"{MEDIA}/download/test/abc?allow_remote=perhaps",
        [(b"", 400, "M_INVALID_PARAM")],
        headers=auth_header(token),
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_bad_upload_parameters(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    cases: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"Content-Type": "not a type"}, {}),
        ({"Content-Type": "image/" + "x" * 300}, {}),
        ({}, {"filename": "a\x00b"}),
        ({}, {"filename": "line\nbreak"}),
        ({}, {"filename": "é" * 128}),  # 256 bytes
    ]
    for headers, params in cases:
        response = await client.post(
            UPLOAD, content=b"x", params=params, headers={**auth_header(token), **headers}
        )
        assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM"), (
            headers,
            params,
        )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_legacy_unauthenticated_downloads(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock()
    async with _config_server(tmp_path, db_url) as (_, client):
        _, token = await register(client, "alice")
        mxc = await upload(client, token, b"legacy", "text/plain")
        for url in (
            f"{LEGACY}/download/{path_of(mxc)}",
            f"{LEGACY}/download/{path_of(mxc)}/a.txt",
            f"{LEGACY}/thumbnail/{path_of(mxc)}?width=32&height=32",
        ):
            response = await client.get(url)
            assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")
    config = make_config(tmp_path, db_url, media={"unauthenticated_freeze_ts": clock.now_ms() + 1})
    async with serve(config, clock) as (_, client):
        response = await client.get(f"{LEGACY}/download/{path_of(mxc)}")
        assert (response.status_code, response.content) == (200, b"legacy")
        assert response.headers["cache-control"].startswith("public,")
        clock.advance(1)  # at the freeze: media from now on needs a token
        newer = await upload(client, token, b"new")
        response = await client.get(f"{LEGACY}/download/{path_of(newer)}")
        assert response.status_code == 404
    config = make_config(tmp_path, db_url, media={"allow_unauthenticated_downloads": True})
    async with serve(config) as (_, client):
        response = await client.get(f"{LEGACY}/download/{path_of(newer)}/n.bin")
        assert (response.status_code, response.content) == (200, b"new")
        assert response.headers["content-disposition"] == 'attachment; filename="n.bin"'


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_cdn_redirects_and_origin_checks(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock()
    config = make_config(
        tmp_path, db_url, media={"cdn": {"base_url": "https://cdn.example.org", "secret": "s" * 32}}
    )
    async with serve(config, clock) as (_, client):
        _, token = await register(client, "alice")
        mxc = await upload(client, token, b"via the edge", "text/plain")
        response = await client.get(f"{MEDIA}/download/{path_of(mxc)}", headers=auth_header(token))
        assert response.status_code == 307
        assert response.headers["cache-control"] == "no-store"
        location = urlsplit(response.headers["location"])
        assert (location.scheme, location.netloc) == ("https", "cdn.example.org")
        assert location.path == f"/_matrix/media/cdn/download/{path_of(mxc)}"
        query = {k: v[0] for k, v in parse_qs(location.query).items()}
        assert int(query["expires"]) * 1000 > clock.now_ms() + 290_000
        # The origin serves the edge what it signed, publicly cacheable.
        response = await client.get(location.path, params=query)
        assert (response.status_code, response.content) == (200, b"via the edge")
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        # Another first character: a fixed suffix could equal the real one (1 run in 256).
        first = "B" if query["md5"][0] == "A" else "A"
        tampered = {**query, "md5": first + query["md5"][1:]}
        other = f"/_matrix/media/cdn/download/test/{'x' * 24}"
        for path, params in [
            (location.path, {}),
            (location.path, tampered),
            (location.path, {"md5": query["md5"]}),
            (location.path, {**query, "expires": "nope"}),
            (other, query),
        ]:
            response = await client.get(path, params=params)
            assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
        # A name override is served directly (the edge caches one name per file).
        response = await client.get(
            f"{MEDIA}/download/{path_of(mxc)}/x.txt", headers=auth_header(token)
        )
        assert response.status_code == 200
        clock.advance(10 * 60 * 1000)
        response = await client.get(location.path, params=query)
        assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_cdn_origin_without_cdn(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/_matrix/media/cdn/download/test/abc", params={"md5": "x", "expires": "1"}
    )
    assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")
