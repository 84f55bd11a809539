"""Image probing and thumbnails with Pillow: synchronous, run in worker threads.

Decoding is bounded before any pixel is decoded: the format must be one of ``FORMATS``, and
the header's width x height must be under the configured pixel limit, so a decompression bomb
(a small file that claims a huge canvas) costs a header read, not gigabytes. Corrupt or
truncated files raise ``ThumbnailError``, never something else. Output carries no metadata
(EXIF, XMP, ICC, comments): EXIF orientation is applied to the pixels, then dropped.
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
# EXIF orientations 5-8 turn the image a quarter: its displayed width is its stored height.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112

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


def thumbnail_size(src_width: int, src_height: int, width: int, height: int,
                   method: Method) -> tuple[int, int]:
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
        raise ThumbnailError("too_large", f"The image is too large to thumbnail "
                                          f"({width}x{height} pixels)")
    return image


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
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
        still = [ThumbnailSpec(s.width, s.height, s.method)
                 for s in specs if not any(r.spec == s for r in out)]
        if still:
            out.extend(_render_still(image, still))
        return out


class _guard:
    """Turn whatever a decoder raises into ``ThumbnailError`` (a corrupt file is no 500)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc is None or isinstance(exc, ThumbnailError) or not isinstance(exc, Exception):
            return
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ThumbnailError("too_large", "The image is too large to thumbnail") from exc
        raise ThumbnailError("corrupt", "The image is corrupt or truncated") from exc


def draft_box(stored: tuple[int, int], transposed: bool,
              specs: list[ThumbnailSpec]) -> tuple[int, int]:
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
    if fmt == "JPEG":
        # Decode at the smallest power-of-two scale still at least as large as needed.
        transposed = _orientation(image) in _TRANSPOSED_ORIENTATIONS
        image.draft("RGB", draft_box(image.size, transposed, specs))
    image.load()
    frame = ImageOps.exif_transpose(image)
    has_alpha = frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info
    frame = frame.convert("RGBA" if has_alpha else "RGB")
    as_jpeg = fmt == "JPEG" and not has_alpha
    out: list[Rendered] = []
    for spec in specs:
        thumb = _resize(frame, spec)
        thumb.info.clear()  # no metadata carried over from the source
        buf = io.BytesIO()
        if as_jpeg:
            thumb.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
            out.append(Rendered(spec, buf.getvalue(), "image/jpeg"))
        else:
            thumb.save(buf, "PNG", optimize=False)
            out.append(Rendered(spec, buf.getvalue(), "image/png"))
    return out


def _render_animated(image: Image.Image, spec: ThumbnailSpec) -> Rendered | None:
    """An animated WebP (spec: preferred for animation), or None if over the limits."""
    frames: list[Image.Image] = []
    durations: list[int] = []
    src_pixels = image.size[0] * image.size[1]
    decoded = 0
    for index, frame in enumerate(ImageSequence.Iterator(image)):
        decoded += src_pixels
        if (index >= MAX_ANIMATED_FRAMES or decoded > MAX_ANIMATED_DECODED_PIXELS
                or (index + 1) * spec.width * spec.height > MAX_ANIMATED_OUTPUT_PIXELS):
            return None
        thumb = _resize(frame.convert("RGBA"), spec)
        thumb.info.clear()
        frames.append(thumb)
        duration = frame.info.get("duration")
        durations.append(int(duration) if isinstance(duration, (int, float)) and duration > 0
                         else DEFAULT_FRAME_MS)
    if len(frames) < 2:
        return None
    buf = io.BytesIO()
    loop = image.info.get("loop", 0)
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=durations,
                   loop=loop if isinstance(loop, int) else 0, quality=WEBP_QUALITY)
    return Rendered(spec, buf.getvalue(), "image/webp")


def _resize(frame: Image.Image, spec: ThumbnailSpec) -> Image.Image:
    size = (spec.width, spec.height)
    if spec.method == "crop":
        return ImageOps.fit(frame, size, method=Image.Resampling.LANCZOS)
    return frame.resize(size, Image.Resampling.LANCZOS)
