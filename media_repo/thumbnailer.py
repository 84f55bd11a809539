"""Image probing and thumbnails with Pillow: synchronous, run in worker threads.

Decoding is bounded before any pixel is decoded: the format must be one of ``FORMATS``, and
the header's width x height must be under the configured pixel limit, so a decompression bomb
(a small file that claims a huge canvas) costs a header read, not gigabytes. Corrupt or
truncated files raise ``ThumbnailError``, never something else. Output carries no metadata
(EXIF, XMP, ICC, comments): EXIF orientation is applied to the pixels, then dropped.

Pixels are decoded once per ``render``, never by ``probe``: the orientation is what the header
says (see ``_orientation``), and the sizes are made largest first, each smaller one from a
larger one already made when that keeps its quality (see ``CASCADE_MIN_RATIO``).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

# Only these decoders are ever used on uploads: fewer decoders, less attack surface.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
# Pillow warns (rather than fails) between its pixel limit and twice it; here every bomb is an
# error, so the warning is one too (caught below as "too large").
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# Animated thumbnails: at most this many frames, and this many pixels decoded or kept in
# all; past either the thumbnail is a still image (spec: as if animated=false).
MAX_ANIMATED_FRAMES = 300
MAX_ANIMATED_DECODED_PIXELS = 400_000_000
MAX_ANIMATED_OUTPUT_PIXELS = 16_000_000
JPEG_QUALITY = 80
WEBP_QUALITY = 75
DEFAULT_FRAME_MS = 100
# A thumbnail is made from a larger one already made (of the whole image) when that one is at
# least this many times its size on both sides, else from the decoded image: from 2x or more,
# the second Lanczos pass stays above 50 dB PSNR against resizing the full image, even on
# noise, in a fraction of the time; from 1.25x (640x480 out of 800x600) fine
# detail visibly softens (40 dB on noise).
CASCADE_MIN_RATIO = 2.0
# EXIF orientations 5-8 turn the image a quarter: its displayed width is its stored height.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112
# What turns stored pixels into displayed ones, per EXIF orientation (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Method = Literal["crop", "scale"]
ErrorKind = Literal["too_large", "unsupported", "corrupt"]


class ThumbnailError(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class ImageProbe:
    """What the header says: the displayed size (orientation applied) and animation."""

    width: int
    height: int
    format: str
    animated: bool


@dataclass(frozen=True, slots=True)
class ThumbnailSpec:
    width: int  # the thumbnail's own size, from ``thumbnail_size``
    height: int
    method: Method
    animated: bool = False


@dataclass(frozen=True, slots=True)
class Rendered:
    spec: ThumbnailSpec  # animated is False when the image could not be animated
    data: bytes
    content_type: str


def thumbnail_size(
    src_width: int, src_height: int, width: int, height: int, method: Method
) -> tuple[int, int]:
    """The size of the thumbnail of a ``src`` image asked as ``width`` x ``height``.

    scale: the largest size of the image's aspect ratio that fits the box; crop: the box's
    aspect ratio. Never larger than the image (spec: servers never upscale).
    """
    if method == "scale":
        ratio = min(width / src_width, height / src_height, 1.0)
        return max(1, round(src_width * ratio)), max(1, round(src_height * ratio))
    factor = min(1.0, src_width / width, src_height / height)
    return max(1, round(width * factor)), max(1, round(height * factor))


def _open(path: Path, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(path, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ThumbnailError("too_large", "The image is too large to thumbnail") from e
    except UnidentifiedImageError as e:
        raise ThumbnailError("unsupported", "Cannot generate thumbnails for this content") from e
    except Exception as e:
        raise ThumbnailError("corrupt", "The image is corrupt or truncated") from e
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        image.close()
        raise ThumbnailError(
            "too_large", f"The image is too large to thumbnail ({width}x{height} pixels)"
        )
    return image


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation from the metadata ahead of the pixels, without decoding them.

    JPEG and WebP keep EXIF in the header. A PNG's eXIf chunk (or EXIF/XMP text chunk) counts
    only before the image data, as browsers do (PNG third edition; WPT
    image-orientation-exif-png): ``PngImageFile.getexif`` would decode every pixel to look
    for one after it, so the base ``Image.getexif`` reads what the header parse found. The
    probe's size and the thumbnails' pixels both come from here, so they always agree.
    """
    try:
        value = Image.Image.getexif(image).get(_EXIF_ORIENTATION, 1)
    except Exception:
        return 1  # a broken EXIF block is ignored, as browsers do
    return value if isinstance(value, int) else 1


def probe(path: Path, max_pixels: int) -> ImageProbe:
    """Read the header; ``ThumbnailError`` if it is not a supported image or too large."""
    with _guard(), _open(path, max_pixels) as image:
        width, height = image.size
        if _orientation(image) in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        fmt = image.format or ""
        animated = fmt in ("GIF", "WEBP", "PNG") and bool(getattr(image, "is_animated", False))
        return ImageProbe(width=width, height=height, format=fmt, animated=animated)


def render(path: Path, specs: list[ThumbnailSpec], max_pixels: int) -> list[Rendered]:
    """Make every thumbnail in ``specs`` from one decode of the image at ``path``."""
    if not specs:
        return []
    with _guard(), _open(path, max_pixels) as image:
        out: list[Rendered] = []
        animated = [s for s in specs if s.animated]
        if animated and getattr(image, "is_animated", False):
            for spec in animated:
                rendered = _render_animated(image, spec)
                if rendered is not None:
                    out.append(rendered)
        image.seek(0)
        still = [
            ThumbnailSpec(s.width, s.height, s.method)
            for s in specs
            if not any(r.spec == s for r in out)
        ]
        if still:
            out.extend(_render_still(image, still))
        return out


class _guard:
    """Turn whatever a decoder raises into ``ThumbnailError`` (a corrupt file is no 500)."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None or isinstance(exc, ThumbnailError) or not isinstance(exc, Exception):
            return
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ThumbnailError("too_large", "The image is too large to thumbnail") from exc
        raise ThumbnailError("corrupt", "The image is corrupt or truncated") from exc


def draft_box(
    stored: tuple[int, int], transposed: bool, specs: list[ThumbnailSpec]
) -> tuple[int, int]:
    """The smallest stored-orientation size that every thumbnail in ``specs`` can be made
    from without upscaling: what a JPEG may be decoded at (``Image.draft``).

    Each spec needs the image scaled by at least ``max(width / W, height / H)`` (W x H as
    displayed: ``transposed`` for EXIF orientations 5-8); a square box of the largest side
    would ask a 4:3 photo's short side for the long side's pixels and so never let the
    decoder scale down.
    """
    width, height = stored
    shown_w, shown_h = (height, width) if transposed else (width, height)
    factor = min(1.0, max(max(s.width / shown_w, s.height / shown_h) for s in specs))
    return max(1, math.ceil(width * factor)), max(1, math.ceil(height * factor))


def _render_still(image: Image.Image, specs: list[ThumbnailSpec]) -> list[Rendered]:
    fmt = image.format
    orientation = _orientation(image)  # read before load(): a late PNG eXIf is not honoured
    transposed = orientation in _TRANSPOSED_ORIENTATIONS
    if fmt == "JPEG":
        # Decode at the smallest power-of-two scale still at least as large as needed.
        image.draft("RGB", draft_box(image.size, transposed, specs))
    image.load()
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    frame = image.convert("RGBA" if has_alpha else "RGB")
    as_jpeg = fmt == "JPEG" and not has_alpha
    transpose = _TRANSPOSE.get(orientation)
    out: list[Rendered] = []
    for spec, thumb in zip(specs, _resize_all(frame, specs, transposed), strict=True):
        if transpose is not None:
            thumb = thumb.transpose(transpose)  # the small image turns, not the full one
        thumb.info.clear()  # no metadata carried over from the source
        buf = io.BytesIO()
        if as_jpeg:
            thumb.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
            out.append(Rendered(spec, buf.getvalue(), "image/jpeg"))
        else:
            thumb.save(buf, "PNG", optimize=False)
            out.append(Rendered(spec, buf.getvalue(), "image/png"))
    return out


def _resize_all(
    frame: Image.Image, specs: list[ThumbnailSpec], transposed: bool
) -> list[Image.Image]:
    """Each spec's thumbnail of ``frame``, in stored orientation (``transposed``: the spec is
    the displayed size, width and height swapped), in the order of ``specs``.

    Largest first, each from the smallest whole-image thumbnail made so far (a ``scale`` one)
    that is at least ``CASCADE_MIN_RATIO`` times larger than what it needs, else from
    ``frame``. Crop and scale are as ``_resize`` makes them from ``frame``: a centred crop of
    a scaled whole image is the same part of the image.
    """
    sizes = [(s.height, s.width) if transposed else (s.width, s.height) for s in specs]
    order = sorted(range(len(specs)), key=lambda i: sizes[i][0] * sizes[i][1], reverse=True)
    sources = [frame]  # whole images, largest first
    made: dict[int, Image.Image] = {}
    for i in order:
        width, height = sizes[i]
        source = next(
            (
                s
                for s in reversed(sources)
                if min(s.width / width, s.height / height) >= CASCADE_MIN_RATIO
            ),
            frame,
        )
        made[i] = _resize(source, sizes[i], specs[i].method)
        if specs[i].method == "scale":
            sources.append(made[i])
    return [made[i] for i in range(len(specs))]


def _render_animated(image: Image.Image, spec: ThumbnailSpec) -> Rendered | None:
    """An animated WebP (spec: preferred for animation), or None if over the limits."""
    frames: list[Image.Image] = []
    durations: list[int] = []
    src_pixels = image.size[0] * image.size[1]
    decoded = 0
    for index, frame in enumerate(ImageSequence.Iterator(image)):
        decoded += src_pixels
        if (
            index >= MAX_ANIMATED_FRAMES
            or decoded > MAX_ANIMATED_DECODED_PIXELS
            or (index + 1) * spec.width * spec.height > MAX_ANIMATED_OUTPUT_PIXELS
        ):
            return None
        thumb = _resize(frame.convert("RGBA"), (spec.width, spec.height), spec.method)
        thumb.info.clear()
        frames.append(thumb)
        duration = frame.info.get("duration")
        durations.append(
            int(duration)
            if isinstance(duration, (int, float)) and duration > 0
            else DEFAULT_FRAME_MS
        )
    if len(frames) < 2:
        return None
    buf = io.BytesIO()
    loop = image.info.get("loop", 0)
    frames[0].save(
        buf,
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=loop if isinstance(loop, int) else 0,
        quality=WEBP_QUALITY,
    )
    return Rendered(spec, buf.getvalue(), "image/webp")


def _resize(frame: Image.Image, size: tuple[int, int], method: Method) -> Image.Image:
    if method == "crop":
        return ImageOps.fit(frame, size, method=Image.Resampling.LANCZOS)
    return frame.resize(size, Image.Resampling.LANCZOS)
