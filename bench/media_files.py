"""The files of the media scenario: deterministic, so both servers get the very same bytes.

Pure functions (tests/unit/test_bench_media_files.py). Every file differs from every other
(its seed), so no server answers an upload from content it already holds (ours stores
identical content once; Synapse does not).
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from functools import cache

from PIL import Image

MIB = 1024 * 1024
STREAM_CHUNK_BYTES = MIB
PHOTO_SIZE = (2000, 1500)
# The coarse random field a photo is upscaled from: blobs of ~25 px, like shapes in a photo.
_BLOB_PX = 25


def blob(size: int, seed: str) -> bytes:
    """``size`` random bytes, the same for the same ``seed`` (incompressible, like media)."""
    return random.Random(seed).randbytes(size)


def stream(size: int, seed: str, chunk: int = STREAM_CHUNK_BYTES) -> Iterator[bytes]:
    """``size`` bytes in chunks of ``chunk``, made as they are asked for: one random chunk
    with each copy's first 8 bytes replaced by its index, so no two chunks are alike and the
    client never holds the whole file."""
    base = blob(chunk, seed)
    sent = 0
    index = 0
    while sent < size:
        n = min(chunk, size - sent)
        piece = index.to_bytes(8, "big") + base[8:]
        yield piece[:n]
        sent += n
        index += 1


@cache
def photo(seed: str, fmt: str, size: tuple[int, int] = PHOTO_SIZE) -> bytes:
    """A photo-like image (smooth colour blobs over a gradient, with grain) as ``fmt``
    (``JPEG`` or ``PNG``) bytes; cached, so both servers get the same file at no extra cost."""
    rng = random.Random(f"photo-{seed}")
    width, height = size
    small = (max(2, width // _BLOB_PX), max(2, height // _BLOB_PX))
    blobs = Image.frombytes("RGB", small, rng.randbytes(small[0] * small[1] * 3))
    image = blobs.resize(size, Image.Resampling.BICUBIC)
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    image = Image.blend(image, gradient, 0.35)
    grain = Image.frombytes("L", size, rng.randbytes(width * height)).convert("RGB")
    image = Image.blend(image, grain, 0.06)
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=90)
    elif fmt == "PNG":
        image.save(out, "PNG")
    else:
        raise ValueError(f"unsupported format: {fmt}")
    return out.getvalue()
