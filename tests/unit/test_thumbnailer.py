"""The thumbnailer: sizes, formats, EXIF orientation, metadata, animation, bounded decoding.

The image makers here are also used by tests/api/test_media_thumbnails.py.
"""

from __future__ import annotations

import io
import math
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFile, ImageStat

from media_repo import thumbnailer
from media_repo.thumbnailer import (
    ThumbnailError,
    ThumbnailSpec,
    draft_box,
    probe,
    render,
    thumbnail_size,
)

MAX_PIXELS = 32_000_000
EXIF_ORIENTATION = 0x0112


def make_image(
    fmt: str,
    width: int,
    height: int,
    *,
    mode: str = "RGB",
    orientation: int | None = None,
    gps: bool = False,
) -> bytes:
    """A ``width`` x ``height`` image, red on the left half and blue on the right."""
    image = Image.new(mode, (width, height), "blue")
    image.paste("red", (0, 0, width // 2, height))
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    if gps:
        exif[0x010F] = "SecretCam"  # Make
        exif[0x8825] = {1: "N", 2: (52.0, 22.0, 1.0)}  # GPS info
    buf = io.BytesIO()
    extra: dict[str, object] = {}
    if len(exif):
        extra["exif"] = exif.tobytes()
    if fmt == "JPEG":
        extra["icc_profile"] = b"fake-icc"
    image.save(buf, fmt, **extra)
    return buf.getvalue()


def make_animation(fmt: str, width: int, height: int, frames: int = 4) -> bytes:
    colors = ["red", "green", "blue", "yellow", "white", "black"]
    images = [Image.new("RGB", (width, height), colors[i % len(colors)]) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, fmt, save_all=True, append_images=images[1:], duration=80, loop=0)
    return buf.getvalue()


def make_png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` but holds a few bytes: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks as (type, whole chunk with length and CRC)."""
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos : pos + 12 + length]))
        pos += 12 + length
    return chunks


def move_exif_after_idat(data: bytes) -> bytes:
    """The same PNG with its eXIf chunk after the image data, just before IEND."""
    chunks = png_chunks(data)
    exif = [whole for kind, whole in chunks if kind == b"eXIf"]
    rest = [whole for kind, whole in chunks if kind not in (b"eXIf", b"IEND")]
    return data[:8] + b"".join(rest + exif) + chunks[-1][1]


def _write(tmp_path: Path, data: bytes, name: str = "image") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize(
    ("src", "box", "method", "expected"),
    [
        ((1000, 500), (320, 240), "scale", (320, 160)),
        ((500, 1000), (320, 240), "scale", (120, 240)),
        ((100, 50), (320, 240), "scale", (100, 50)),  # never upscaled
        ((1000, 500), (96, 96), "crop", (96, 96)),
        ((1000, 500), (200, 100), "crop", (200, 100)),
        ((50, 40), (96, 96), "crop", (40, 40)),  # as large as the image allows, same aspect
        ((1, 1), (32, 32), "crop", (1, 1)),
    ],
)
def test_thumbnail_size(
    src: tuple[int, int], box: tuple[int, int], method: str, expected: tuple[int, int]
) -> None:
    assert thumbnail_size(*src, *box, method) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stored", "transposed", "specs", "expected"),
    [
        # A 4:3 photo for 800x600 and 96x96: 800x600 is enough, so a 1/2 decode (1000x750) will do.
        ((2000, 1500), False, [(800, 600, "scale"), (96, 96, "crop")], (800, 600)),
        # Stored 1500x2000, shown 2000x1500 (orientation 6): the same, in stored orientation.
        ((1500, 2000), True, [(800, 600, "scale"), (96, 96, "crop")], (600, 800)),
        # A panorama cropped square: the short side decides.
        ((2000, 500), False, [(96, 96, "crop")], (384, 96)),
        # Never more than the image itself.
        ((100, 50), False, [(800, 600, "scale")], (100, 50)),
    ],
)
def test_draft_box(
    stored: tuple[int, int],
    transposed: bool,
    specs: list[tuple[int, int, str]],
    expected: tuple[int, int],
) -> None:
    box = draft_box(stored, transposed, [ThumbnailSpec(w, h, m) for w, h, m in specs])  # type: ignore[arg-type]
    assert box == expected


def test_large_jpeg_thumbnails_from_a_reduced_decode(tmp_path: Path) -> None:
    path = _write(tmp_path, make_image("JPEG", 2000, 1500))
    with Image.open(path) as image:
        image.draft("RGB", draft_box(image.size, False, [ThumbnailSpec(800, 600, "scale")]))
        assert image.size == (1000, 750)  # what render decodes: a quarter of the pixels
    scale, crop = render(
        path, [ThumbnailSpec(800, 600, "scale"), ThumbnailSpec(96, 96, "crop")], MAX_PIXELS
    )
    assert _open(scale.data).size == (800, 600)
    assert _open(crop.data).size == (96, 96)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_formats(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path, make_image(fmt, 400, 200))
    info = probe(path, MAX_PIXELS)
    assert (info.width, info.height, info.format, info.animated) == (400, 200, fmt, False)
    scale, crop = render(
        path, [ThumbnailSpec(200, 100, "scale"), ThumbnailSpec(64, 64, "crop")], MAX_PIXELS
    )
    expected_type = "image/jpeg" if fmt == "JPEG" else "image/png"
    assert (scale.content_type, crop.content_type) == (expected_type, expected_type)
    assert _open(scale.data).size == (200, 100)
    thumb = _open(crop.data).convert("RGB")
    assert thumb.size == (64, 64)
    # crop keeps the middle: red on the left half, blue on the right.
    left, right = thumb.getpixel((2, 32)), thumb.getpixel((61, 32))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize(
    ("orientation", "shown", "red", "blue"),
    [
        # Stored 200x100, red on the left half; thumbnails are half the displayed size.
        (1, (100, 50), (5, 25), (95, 25)),
        (3, (100, 50), (95, 25), (5, 25)),  # turned 180°: red on the right
        (6, (50, 100), (25, 5), (25, 95)),  # turned 90° clockwise: red on top
        (8, (50, 100), (25, 95), (25, 5)),  # turned 90° anticlockwise: red at the bottom
    ],
)
def test_exif_orientation_applied_and_metadata_stripped(
    tmp_path: Path,
    fmt: str,
    orientation: int,
    shown: tuple[int, int],
    red: tuple[int, int],
    blue: tuple[int, int],
) -> None:
    path = _write(tmp_path, make_image(fmt, 200, 100, orientation=orientation, gps=True))
    info = probe(path, MAX_PIXELS)
    assert (info.width, info.height) == (shown[0] * 2, shown[1] * 2)
    scale, crop = render(
        path, [ThumbnailSpec(*shown, "scale"), ThumbnailSpec(40, 40, "crop")], MAX_PIXELS
    )
    image = _open(scale.data)
    assert image.size == shown
    _assert_red_and_blue(image.convert("RGB"), red, blue)
    for out in (image, _open(crop.data)):
        assert len(out.getexif()) == 0
        assert not {"icc_profile", "exif", "xmp"} & set(out.info)


def _assert_red_and_blue(image: Image.Image, red: tuple[int, int], blue: tuple[int, int]) -> None:
    r, b = image.getpixel(red), image.getpixel(blue)
    assert isinstance(r, tuple) and isinstance(b, tuple)
    assert r[0] > 200 and r[2] < 60 and b[2] > 200 and b[0] < 60, (r, b)


def test_png_exif_after_the_pixels_is_ignored(tmp_path: Path) -> None:
    # Browsers honour a PNG's eXIf only before IDAT (PNG third edition): so do the probe and
    # the thumbnails, which therefore never disagree about the size.
    data = move_exif_after_idat(make_image("PNG", 200, 100, orientation=6))
    assert [kind for kind, _ in png_chunks(data)][-2:] == [b"eXIf", b"IEND"]
    path = _write(tmp_path, data)
    info = probe(path, MAX_PIXELS)
    assert (info.width, info.height) == (200, 100)
    (thumb,) = render(path, [ThumbnailSpec(100, 50, "scale")], MAX_PIXELS)
    image = _open(thumb.data).convert("RGB")
    assert image.size == (100, 50)
    _assert_red_and_blue(image, (5, 25), (95, 25))


@pytest.mark.parametrize(
    ("fmt", "orientation"),
    [
        ("JPEG", None),
        ("JPEG", 6),
        ("PNG", None),
        ("PNG", 6),
        ("WEBP", None),
        ("WEBP", 6),
        ("GIF", None),
    ],
)
def test_probe_decodes_no_pixels(
    tmp_path: Path, fmt: str, orientation: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PNG without eXIf is the case Pillow's own getexif() decodes the whole image for.
    path = _write(tmp_path, make_image(fmt, 300, 200, orientation=orientation))

    decoded: list[Image.Image] = []

    def load(self: Image.Image) -> None:
        decoded.append(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    info = probe(path, MAX_PIXELS)
    assert decoded == []
    assert (info.width, info.height) == ((300, 200) if orientation is None else (200, 300))


def test_smaller_sizes_made_from_larger_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stored 1500x2000, shown 2000x1500 (orientation 6): resized in stored orientation.
    path = _write(tmp_path, make_image("PNG", 1500, 2000, orientation=6))
    sources: dict[tuple[int, int], tuple[int, int]] = {}
    resize = thumbnailer._resize

    def recording(frame: Image.Image, size: tuple[int, int], method: str) -> Image.Image:
        sources[size] = frame.size
        return resize(frame, size, method)  # type: ignore[arg-type]

    monkeypatch.setattr(thumbnailer, "_resize", recording)
    specs = [
        ThumbnailSpec(32, 32, "crop"),
        ThumbnailSpec(96, 96, "crop"),
        ThumbnailSpec(320, 240, "scale"),
        ThumbnailSpec(640, 480, "scale"),
        ThumbnailSpec(800, 600, "scale"),
    ]
    out = render(path, specs, MAX_PIXELS)
    assert [_open(r.data).size for r in out] == [
        (32, 32),
        (96, 96),
        (320, 240),
        (640, 480),
        (800, 600),
    ]
    assert [r.spec for r in out] == specs
    assert sources == {
        (600, 800): (1500, 2000),
        (480, 640): (1500, 2000),  # 800x600 is only 1.25x as large: from the image
        (240, 320): (480, 640),
        (96, 96): (240, 320),  # crops come from whole-image thumbnails
        (32, 32): (240, 320),
    }


def test_sizes_made_from_larger_ones_look_the_same(tmp_path: Path) -> None:
    # Noise is the worst case for resizing twice: every pixel is fine detail.
    noise = Image.frombytes("RGB", (1000, 750), random.Random(7).randbytes(1000 * 750 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    path = _write(tmp_path, buf.getvalue())
    specs = [
        ThumbnailSpec(400, 300, "scale"),
        ThumbnailSpec(160, 120, "scale"),
        ThumbnailSpec(48, 48, "crop"),
        ThumbnailSpec(16, 16, "crop"),
    ]
    for spec, rendered in zip(specs, render(path, specs, MAX_PIXELS), strict=True):
        direct = thumbnailer._resize(noise, (spec.width, spec.height), spec.method)
        assert _psnr(_open(rendered.data).convert("RGB"), direct) > 45, spec


def _psnr(a: Image.Image, b: Image.Image) -> float:
    rms = ImageStat.Stat(ImageChops.difference(a, b)).rms
    mse = sum(x * x for x in rms) / len(rms)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_png_text_and_transparency(tmp_path: Path) -> None:
    image = Image.new("RGBA", (100, 100), (255, 0, 0, 0))
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret location")
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=text)
    path = _write(tmp_path, buf.getvalue())
    (thumb,) = render(path, [ThumbnailSpec(32, 32, "crop")], MAX_PIXELS)
    out = _open(thumb.data)
    assert (thumb.content_type, out.mode) == ("image/png", "RGBA")
    assert "Comment" not in out.info


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])  # PNG: APNG
def test_animated(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path, make_animation(fmt, 200, 100, frames=5))
    assert probe(path, MAX_PIXELS).animated is True
    animated, still = render(
        path,
        [ThumbnailSpec(100, 50, "scale", animated=True), ThumbnailSpec(100, 50, "scale")],
        MAX_PIXELS,
    )
    assert animated.content_type == "image/webp"
    out = _open(animated.data)
    assert out.size == (100, 50)
    assert getattr(out, "n_frames", 1) == 5
    assert still.content_type == "image/png" and getattr(_open(still.data), "n_frames", 1) == 1


def test_animation_past_the_limits_is_a_still(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from media_repo import thumbnailer

    monkeypatch.setattr(thumbnailer, "MAX_ANIMATED_FRAMES", 3)
    path = _write(tmp_path, make_animation("GIF", 60, 60, frames=5))
    (thumb,) = render(path, [ThumbnailSpec(30, 30, "crop", animated=True)], MAX_PIXELS)
    assert thumb.content_type == "image/png"
    assert thumb.spec.animated is False


def test_animated_request_for_a_still_image(tmp_path: Path) -> None:
    path = _write(tmp_path, make_image("JPEG", 100, 100))
    (thumb,) = render(path, [ThumbnailSpec(50, 50, "crop", animated=True)], MAX_PIXELS)
    assert thumb.content_type == "image/jpeg"


@pytest.mark.parametrize(
    ("data", "max_pixels", "kind"),
    [
        (make_png_header(100_000, 100_000), MAX_PIXELS, "too_large"),  # past Pillow's own limit
        (make_png_header(20_000, 20_000), MAX_PIXELS, "too_large"),  # past ours
        (make_image("PNG", 2000, 1000), 1_000_000, "too_large"),
        (b"definitely not an image", MAX_PIXELS, "unsupported"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", MAX_PIXELS, "unsupported"),
        (make_image("BMP", 10, 10), MAX_PIXELS, "unsupported"),  # a decoder we do not use
        (make_image("JPEG", 400, 400)[:300], MAX_PIXELS, "corrupt"),
        (make_image("PNG", 400, 400)[:200], MAX_PIXELS, "corrupt"),
        (make_png_header(64, 64), MAX_PIXELS, "corrupt"),  # too little pixel data
    ],
)
def test_bad_images_give_clear_errors(
    tmp_path: Path, data: bytes, max_pixels: int, kind: str
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ThumbnailError) as caught:
        info = probe(path, max_pixels)
        render(path, [ThumbnailSpec(min(32, info.width), min(32, info.height), "crop")], max_pixels)
    assert caught.value.kind == kind, caught.value.message
