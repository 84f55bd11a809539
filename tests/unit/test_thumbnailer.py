"""The thumbnailer: sizes, formats, EXIF orientation, metadata, animation, bounded decoding.

The image makers here are also used by tests/api/test_media_thumbnails.py.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

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


def make_image(fmt: str, width: int, height: int, *, mode: str = "RGB",
               orientation: int | None = None, gps: bool = False) -> bytes:
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
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _write(tmp_path: Path, data: bytes, name: str = "image") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize(("src", "box", "method", "expected"), [
    ((1000, 500), (320, 240), "scale", (320, 160)),
    ((500, 1000), (320, 240), "scale", (120, 240)),
    ((100, 50), (320, 240), "scale", (100, 50)),  # never upscaled
    ((1000, 500), (96, 96), "crop", (96, 96)),
    ((1000, 500), (200, 100), "crop", (200, 100)),
    ((50, 40), (96, 96), "crop", (40, 40)),  # as large as the image allows, same aspect
    ((1, 1), (32, 32), "crop", (1, 1)),
])
def test_thumbnail_size(src: tuple[int, int], box: tuple[int, int], method: str,
                        expected: tuple[int, int]) -> None:
    assert thumbnail_size(*src, *box, method) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("stored", "transposed", "specs", "expected"), [
    # A 4:3 photo for 800x600 and 96x96: 800x600 is enough, so a 1/2 decode (1000x750) will do.
    ((2000, 1500), False, [(800, 600, "scale"), (96, 96, "crop")], (800, 600)),
    # Stored 1500x2000, shown 2000x1500 (orientation 6): the same, in stored orientation.
    ((1500, 2000), True, [(800, 600, "scale"), (96, 96, "crop")], (600, 800)),
    # A panorama cropped square: the short side decides.
    ((2000, 500), False, [(96, 96, "crop")], (384, 96)),
    # Never more than the image itself.
    ((100, 50), False, [(800, 600, "scale")], (100, 50)),
])
def test_draft_box(stored: tuple[int, int], transposed: bool,
                   specs: list[tuple[int, int, str]], expected: tuple[int, int]) -> None:
    box = draft_box(stored, transposed,
                    [ThumbnailSpec(w, h, m) for w, h, m in specs])  # type: ignore[arg-type]
    assert box == expected


def test_large_jpeg_thumbnails_from_a_reduced_decode(tmp_path: Path) -> None:
    path = _write(tmp_path, make_image("JPEG", 2000, 1500))
    with Image.open(path) as image:
        image.draft("RGB", draft_box(image.size, False, [ThumbnailSpec(800, 600, "scale")]))
        assert image.size == (1000, 750)  # what render decodes: a quarter of the pixels
    scale, crop = render(path, [ThumbnailSpec(800, 600, "scale"),
                                ThumbnailSpec(96, 96, "crop")], MAX_PIXELS)
    assert _open(scale.data).size == (800, 600)
    assert _open(crop.data).size == (96, 96)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_formats(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path, make_image(fmt, 400, 200))
    info = probe(path, MAX_PIXELS)
    assert (info.width, info.height, info.format, info.animated) == (400, 200, fmt, False)
    scale, crop = render(path, [ThumbnailSpec(200, 100, "scale"),
                                ThumbnailSpec(64, 64, "crop")], MAX_PIXELS)
    expected_type = "image/jpeg" if fmt == "JPEG" else "image/png"
    assert (scale.content_type, crop.content_type) == (expected_type, expected_type)
    assert _open(scale.data).size == (200, 100)
    thumb = _open(crop.data).convert("RGB")
    assert thumb.size == (64, 64)
    # crop keeps the middle: red on the left half, blue on the right.
    left, right = thumb.getpixel((2, 32)), thumb.getpixel((61, 32))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


def test_exif_orientation_applied_and_metadata_stripped(tmp_path: Path) -> None:
    # Stored 200x100 (red left), orientation 6: shown turned 90° clockwise, so 100x200 with
    # red on top.
    path = _write(tmp_path, make_image("JPEG", 200, 100, orientation=6, gps=True))
    info = probe(path, MAX_PIXELS)
    assert (info.width, info.height) == (100, 200)
    (thumb,) = render(path, [ThumbnailSpec(50, 100, "scale")], MAX_PIXELS)
    image = _open(thumb.data)
    assert image.size == (50, 100)
    top, bottom = image.getpixel((25, 5)), image.getpixel((25, 95))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and bottom[2] > 200
    assert len(image.getexif()) == 0
    assert "icc_profile" not in image.info and "exif" not in image.info


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
    animated, still = render(path, [ThumbnailSpec(100, 50, "scale", animated=True),
                                    ThumbnailSpec(100, 50, "scale")], MAX_PIXELS)
    assert animated.content_type == "image/webp"
    out = _open(animated.data)
    assert out.size == (100, 50)
    assert getattr(out, "n_frames", 1) == 5
    assert still.content_type == "image/png" and getattr(_open(still.data), "n_frames", 1) == 1


def test_animation_past_the_limits_is_a_still(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
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


@pytest.mark.parametrize(("data", "max_pixels", "kind"), [
    (make_png_header(100_000, 100_000), MAX_PIXELS, "too_large"),  # past Pillow's own limit
    (make_png_header(20_000, 20_000), MAX_PIXELS, "too_large"),  # past ours
    (make_image("PNG", 2000, 1000), 1_000_000, "too_large"),
    (b"definitely not an image", MAX_PIXELS, "unsupported"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", MAX_PIXELS, "unsupported"),
    (make_image("BMP", 10, 10), MAX_PIXELS, "unsupported"),  # a decoder we do not use
    (make_image("JPEG", 400, 400)[:300], MAX_PIXELS, "corrupt"),
    (make_image("PNG", 400, 400)[:200], MAX_PIXELS, "corrupt"),
    (make_png_header(64, 64), MAX_PIXELS, "corrupt"),  # too little pixel data
])
def test_bad_images_give_clear_errors(tmp_path: Path, data: bytes, max_pixels: int,
                                      kind: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ThumbnailError) as caught:
        info = probe(path, max_pixels)
        render(path, [ThumbnailSpec(min(32, info.width), min(32, info.height), "crop")],
               max_pixels)
    assert caught.value.kind == kind, caught.value.message
