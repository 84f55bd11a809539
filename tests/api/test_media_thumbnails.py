"""Thumbnails over HTTP: sizes, crop vs scale, formats, animation, caching, refusals."""

from __future__ import annotations

import io
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from homeserver.app import Homeserver
from media_repo.mxc import MxcUri
from tests.api.test_media import MEDIA, path_of, upload
from tests.conftest import make_config
from tests.helpers import assert_errors, auth_header, register, serve
from tests.unit.test_thumbnailer import make_animation, make_image, make_png_header

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def thumbnail(
    client: httpx.AsyncClient,
    token: str,
    mxc: str,
    width: int,
    height: int,
    method: str = "scale",
    **params: str,
) -> httpx.Response:
    return await client.get(
        f"{MEDIA}/thumbnail/{path_of(mxc)}",
        headers=auth_header(token),
        params={"width": width, "height": height, "method": method, **params},
    )


def image_of(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


async def _count(hs: Homeserver, data: bytes) -> int:
    import hashlib

    return await hs.media._store.count_thumbnails(hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    ("fmt", "content_type", "thumb_type"),
    [
        ("PNG", "image/png", "image/png"),
        ("JPEG", "image/jpeg", "image/jpeg"),
        ("GIF", "image/gif", "image/png"),
        ("WEBP", "image/webp", "image/png"),
    ],
)
async def test_sizes_and_formats(
    client: httpx.AsyncClient, hs: Homeserver, fmt: str, content_type: str, thumb_type: str
) -> None:
    _, token = await register(client, "alice")
    data = make_image(fmt, 1000, 500)
    mxc = await upload(client, token, data, content_type, "picture")
    # The five configured sizes were made on upload (32 and 96 crops, three scales).
    assert await _count(hs, data) == 5
    response = await thumbnail(client, token, mxc, 32, 32, "crop")
    assert image_of(response).size == (32, 32)
    assert response.headers["content-type"] == thumb_type
    extension = {"image/png": "png", "image/jpeg": "jpg"}[thumb_type]
    assert response.headers["content-disposition"] == f'inline; filename="thumbnail.{extension}"'
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in response.headers["content-security-policy"]
    assert "immutable" in response.headers["cache-control"]
    # scale keeps the aspect ratio; crop takes the box's.
    assert image_of(await thumbnail(client, token, mxc, 320, 240)).size == (320, 160)
    assert image_of(await thumbnail(client, token, mxc, 320, 240, "crop")).size == (320, 240)
    # A smaller request gets the smallest configured size at least as large.
    assert image_of(await thumbnail(client, token, mxc, 100, 100)).size == (320, 160)
    assert image_of(await thumbnail(client, token, mxc, 80, 80, "crop")).size == (96, 96)
    # Only the 320x240 crop (no configured crop that large) was new.
    assert await _count(hs, data) == 6


async def test_on_demand_sizes_are_kept_and_never_upscaled(
    client: httpx.AsyncClient, hs: Homeserver
) -> None:
    _, token = await register(client, "alice")
    data = make_image("PNG", 1200, 900)
    mxc = await upload(client, token, data, "image/png")
    response = await thumbnail(client, token, mxc, 1000, 1000)
    assert image_of(response).size == (1000, 750)
    assert await _count(hs, data) == 6
    again = await thumbnail(client, token, mxc, 1000, 1000)
    assert again.content == response.content and again.headers["etag"] == response.headers["etag"]
    assert await _count(hs, data) == 6
    response = await thumbnail(client, token, mxc, 5000, 5000)
    assert image_of(response).size == (1200, 900)  # the image's own size, not more
    r304 = await client.get(
        f"{MEDIA}/thumbnail/{path_of(mxc)}?width=5000&height=5000",
        headers={**auth_header(token), "If-None-Match": response.headers["etag"]},
    )
    assert r304.status_code == 304


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
async def test_exif_rotation_and_no_metadata(
    client: httpx.AsyncClient, hs: Homeserver, fmt: str
) -> None:
    _, token = await register(client, "alice")
    data = make_image(fmt, 800, 400, orientation=6, gps=True)
    mxc = await upload(client, token, data, f"image/{fmt.lower()}")
    media = await hs.media.get_media(MxcUri.parse(mxc), timeout_ms=0)
    assert (media.width, media.height) == (400, 800)  # the displayed size
    # Every size, made on upload from one another (largest first), is shown upright.
    for box, size in [((800, 600), (300, 600)), ((640, 480), (240, 480)), ((320, 240), (120, 240))]:
        image = image_of(await thumbnail(client, token, mxc, *box)).convert("RGB")
        assert image.size == size  # taller than wide
        top = image.getpixel((size[0] // 2, 5))
        bottom = image.getpixel((size[0] // 2, size[1] - 5))
        assert isinstance(top, tuple) and isinstance(bottom, tuple)
        assert top[0] > 200 and bottom[2] > 200
    for crop in (96, 32):
        image = image_of(await thumbnail(client, token, mxc, crop, crop, "crop"))
        assert image.size == (crop, crop)
        assert len(image.getexif()) == 0 and "icc_profile" not in image.info
    assert await _count(hs, data) == 5  # all made on upload


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
async def test_animated(client: httpx.AsyncClient, fmt: str) -> None:
    _, token = await register(client, "alice")
    mxc = await upload(
        client, token, make_animation(fmt, 300, 300, frames=6), f"image/{fmt.lower()}"
    )
    response = await thumbnail(client, token, mxc, 96, 96, "crop", animated="true")
    assert response.headers["content-type"] == "image/webp"
    image = image_of(response)
    assert image.size == (96, 96) and getattr(image, "n_frames", 1) == 6
    for params in ({"animated": "false"}, {}):
        response = await thumbnail(client, token, mxc, 96, 96, "crop", **params)
        assert response.headers["content-type"] == "image/png"
        assert getattr(image_of(response), "n_frames", 1) == 1
    # A still image asked for animation is a still thumbnail (spec).
    still = await upload(client, token, make_image("JPEG", 300, 300), "image/jpeg")
    response = await thumbnail(client, token, still, 96, 96, "crop", animated="true")
    assert response.headers["content-type"] == "image/jpeg"


async def test_refusals(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    cases = [
        (make_png_header(100_000, 100_000), "image/png", 413, "M_TOO_LARGE"),
        (make_png_header(10_000, 10_000), "image/png", 413, "M_TOO_LARGE"),
        (b"\x89PNG\r\n\x1a\n garbage", "image/png", 400, "M_UNKNOWN"),
        (make_image("JPEG", 500, 500)[:400], "image/jpeg", 400, "M_UNKNOWN"),
        (b"just text", "text/plain", 400, "M_UNKNOWN"),
        (os.urandom(2048), "application/octet-stream", 400, "M_UNKNOWN"),
    ]
    for data, content_type, status, errcode in cases:
        mxc = await upload(client, token, data, content_type)  # the upload itself stands
        response = await thumbnail(client, token, mxc, 32, 32)
        assert (response.status_code, response.json()["errcode"]) == (status, errcode), data[:20]
        response = await client.get(f"{MEDIA}/download/{path_of(mxc)}", headers=auth_header(token))
        assert response.content == data


async def test_bad_parameters(client: httpx.AsyncClient) -> None:
    _, token = await register(client, "alice")
    mxc = await upload(client, token, make_image("PNG", 64, 64), "image/png")
    base = f"{MEDIA}/thumbnail/{path_of(mxc)}"
    for query, status, errcode in [
        ("height=32", 400, "M_MISSING_PARAM"),
        ("width=32", 400, "M_MISSING_PARAM"),
        ("width=abc&height=32", 400, "M_INVALID_PARAM"),
        ("width=0&height=32", 400, "M_INVALID_PARAM"),
        ("width=32&height=-5", 400, "M_INVALID_PARAM"),
        ("width=1.5&height=32", 400, "M_INVALID_PARAM"),
        ("width=32&height=32&method=zoom", 400, "M_INVALID_PARAM"),
        ("width=32&height=32&animated=maybe", 400, "M_INVALID_PARAM"),
        ("width=32&height=32&timeout_ms=x", 400, "M_INVALID_PARAM"),
    ]:
        await assert_errors(
            client, "GET", f"{base}?{query}", [(b"", status, errcode)], headers=auth_header(token)
        )
    response = await thumbnail(client, token, mxc, 10**9, 10**9)
    assert image_of(response).size == (64, 64)


async def test_limits_from_config(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path,
        db_url,
        media={
            "thumbnails": {
                "max_image_pixels": 10_000,
                "max_source_bytes": 5000,
                "sizes": [{"width": 10, "height": 10, "method": "crop"}],
            }
        },
    )
    async with serve(config) as (hs, client):
        _, token = await register(client, "alice")
        small = make_image("PNG", 90, 90)
        mxc = await upload(client, token, small, "image/png")
        assert await _count(hs, small) == 1
        assert image_of(await thumbnail(client, token, mxc, 5, 5, "crop")).size == (10, 10)
        for data in (make_image("PNG", 200, 200), os.urandom(6000)):
            mxc = await upload(client, token, data, "image/png")
            response = await thumbnail(client, token, mxc, 5, 5)
            assert (response.status_code, response.json()["errcode"]) == (413, "M_TOO_LARGE")
    config = make_config(tmp_path, db_url, media={"thumbnails": {"enabled": False}})
    async with serve(config) as (_, client):
        response = await thumbnail(client, token, mxc, 5, 5)
        assert (response.status_code, response.json()["errcode"]) == (400, "M_UNKNOWN")


async def test_cdn_thumbnail_redirect(tmp_path: Path, db_url: str) -> None:
    config = make_config(
        tmp_path,
        db_url,
        media={"cdn": {"base_url": "http://cdn.test", "secret": "a-long-shared-secret"}},
    )
    async with serve(config) as (_, client):
        _, token = await register(client, "alice")
        mxc = await upload(client, token, make_image("PNG", 1000, 500), "image/png")
        response = await thumbnail(client, token, mxc, 320, 240)
        assert response.status_code == 307
        location = httpx.URL(response.headers["location"])
        assert location.path == f"/_matrix/media/cdn/thumbnail/{path_of(mxc)}/320x160-scale"
        response = await client.get(location.path, params=dict(location.params))
        assert image_of(response).size == (320, 160)
        assert response.headers["cache-control"].startswith("public,")
        for bad in ("320x160-zoom", "0x0-crop", "x-scale"):
            response = await client.get(
                f"/_matrix/media/cdn/thumbnail/{path_of(mxc)}/{bad}", params=dict(location.params)
            )
            assert response.status_code in (400, 403)
            assert response.json()["errcode"] in ("M_INVALID_PARAM", "M_FORBIDDEN")
        # Signed for one size, not another.
        response = await client.get(
            location.path.replace("320x160", "640x320"), params=dict(location.params)
        )
        assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
