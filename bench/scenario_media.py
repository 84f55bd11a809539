"""Scenario 6, ``media``: uploads, authenticated downloads and thumbnails, one request at a time.

One user; every part is measured on its own (server CPU seconds and peak RSS per part):

- ``media_upload_{1,10}mib``: ``POST /_matrix/media/v3/upload`` of random files, one after
  another: MiB/s over the part and latency percentiles.
- ``media_download_{1,10}mib``: the same files through authenticated media
  (``GET /_matrix/client/v1/media/download/…``), each ``DOWNLOAD_PASSES`` times, checked
  against what was uploaded.
- ``media_{upload,download}_100mib`` at ``--scale`` 1 or more: one 100 MiB file, streamed by
  the client in 1 MiB chunks with a declared length; the part's peak RSS shows whether the
  server holds a whole file in memory.
- ``media_thumbnail_{jpeg,png}``: 2000x1500 photo-like images; each is uploaded (timed: both
  servers make their configured thumbnails during the upload), then its 96x96 ``scale`` and
  ``crop`` thumbnails are asked for once (first) and ``THUMBNAIL_REPEATS`` times more (cached).

Files come from ``bench/media_files.py``, seeded with the run ID: both servers of a run get the
same bytes, and a server kept running between runs (``--url``) never sees a file twice.

Hooked into ``bench/scenarios.py`` like ``scenario_ws``: ``"media"`` in ``SCENARIOS``,
``FIGURES.update(MEDIA_FIGURES)``, and ``Bench.media`` returning ``await media(self)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import aiohttp

from bench.client import MatrixCallError, User
from bench.media_files import MIB, blob, photo, stream
from bench.scenarios import Bench, Figure, Result
from bench.stats import mib_per_s, percentile

DOWNLOAD_PASSES = 2
THUMBNAIL_REPEATS = 10
THUMBNAIL_BOX = {"width": "96", "height": "96"}
METHODS = ("scale", "crop")
IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
# A request that fails is counted and the part goes on.
REQUEST_ERRORS = (MatrixCallError, aiohttp.ClientError, TimeoutError)


def _transfer_figures(what: str) -> dict[str, Figure]:
    return {
        "mib_per_s": Figure(f"{what} throughput", "MiB/s", True),
        "p50_ms": Figure(f"{what} p50", "ms"),
        "p99_ms": Figure(f"{what} p99", "ms"),
    }


MEDIA_FIGURES = {
    "media_upload": _transfer_figures("upload"),
    "media_download": _transfer_figures("download"),
    "media_thumbnail": {
        "upload_p50_ms": Figure("image upload p50", "ms"),
        **{
            f"{when}_{method}_{q}_ms": Figure(f"96x96 {method} {when} {q}", "ms")
            for when in ("first", "cached")
            for method in METHODS
            for q in ("p50", "p99")
        },
    },
}


async def media(bench: Bench) -> list[Result]:
    (user,) = await bench.users(1)
    results: list[Result] = []
    sizes = [(1, bench.n(10, 3)), (10, bench.n(5, 2))]
    if bench.scale >= 1:
        sizes.append((100, 1))
    for mib, count in sizes:
        uploaded = await _uploads(bench, user, mib, count, results)
        await _downloads(bench, user, mib, uploaded, results)
    for fmt in IMAGE_TYPES:
        results.append(await _thumbnails(bench, user, fmt, bench.n(5, 2)))
    return results


def _transfer_result(result: Result, samples: list[float], total_bytes: int) -> None:
    """Throughput over the requests' own time: what the client does between two requests
    (checking a download) is not counted."""
    result.samples_ms["request"] = samples
    result.figures = {
        "mib_per_s": mib_per_s(total_bytes, sum(samples) / 1000),
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
    }


async def _chunks(size: int, seed: str) -> AsyncIterator[bytes]:
    for chunk in stream(size, seed):
        yield chunk


async def _uploads(
    bench: Bench, user: User, mib: int, count: int, results: list[Result]
) -> list[tuple[str, str]]:
    """Upload ``count`` files of ``mib`` MiB; returns each one's mxc URI and sha256."""
    size = mib * MIB
    streamed = mib >= 100
    result = Result(
        f"media_upload_{mib}mib",
        f"{count} uploads of {mib} MiB, one at a time"
        + (", streamed by the client in 1 MiB chunks" if streamed else ""),
    )
    seeds = [f"{bench.run_id}-{mib}mib-{i}" for i in range(count)]
    if streamed:
        bodies: list[bytes] = []
        digests = [await asyncio.to_thread(_stream_digest, size, seed) for seed in seeds]
    else:
        bodies = [await asyncio.to_thread(blob, size, seed) for seed in seeds]
        digests = [hashlib.sha256(body).hexdigest() for body in bodies]
    uploaded: list[tuple[str, str]] = []
    samples: list[float] = []
    done_bytes = 0
    with bench.measure(result):
        began = time.perf_counter()
        for i, seed in enumerate(seeds):
            if time.perf_counter() - began > bench.budget_seconds:
                result.note = f"time budget reached: {i} of {count} uploads"
                break
            data = _chunks(size, seed) if streamed else bodies[i]
            start = time.perf_counter()
            try:
                mxc = await bench.mx.upload(
                    user, data, size, "application/octet-stream", f"bench-{mib}mib-{i}.bin"
                )
            except REQUEST_ERRORS as e:
                _failed(bench, result, e)
                continue
            samples.append((time.perf_counter() - start) * 1000)
            done_bytes += size
            uploaded.append((mxc, digests[i]))
    _transfer_result(result, samples, done_bytes)
    results.append(result)
    return uploaded


def _stream_digest(size: int, seed: str) -> str:
    digest = hashlib.sha256()
    for chunk in stream(size, seed):
        digest.update(chunk)
    return digest.hexdigest()


async def _downloads(
    bench: Bench, user: User, mib: int, uploaded: list[tuple[str, str]], results: list[Result]
) -> None:
    passes = 1 if mib >= 100 else DOWNLOAD_PASSES
    result = Result(
        f"media_download_{mib}mib",
        f"{len(uploaded)} files of {mib} MiB, "
        f"downloaded {passes}x each, one at a time; authenticated media",
    )
    samples: list[float] = []
    done_bytes = 0
    with bench.measure(result):
        began = time.perf_counter()
        for round_ in range(passes):
            if time.perf_counter() - began > bench.budget_seconds:
                result.note = f"time budget reached after {round_} of {passes} passes"
                break
            for mxc, digest in uploaded:
                start = time.perf_counter()
                try:
                    body, _ = await bench.mx.media(user, "download", mxc)
                except REQUEST_ERRORS as e:
                    _failed(bench, result, e)
                    continue
                samples.append((time.perf_counter() - start) * 1000)
                done_bytes += len(body)
                if hashlib.sha256(body).hexdigest() != digest:
                    _failed(bench, result, f"{mxc}: not the bytes uploaded")
    _transfer_result(result, samples, done_bytes)
    results.append(result)


def _failed(bench: Bench, result: Result, error: object) -> None:
    """Count a failed request; the first of a part is shown, the rest only counted."""
    result.errors += 1
    if result.errors == 1:
        bench.progress(f"  {result.name}: {error}")


async def _thumbnails(bench: Bench, user: User, fmt: str, count: int) -> Result:
    content_type = IMAGE_TYPES[fmt]
    # Made in a thread: a PNG takes a second to encode, and an event loop blocked for longer
    # than the server's keep-alive timeout (uvicorn: 5 s) would send the next upload on a
    # connection the server has closed meanwhile (a broken pipe).
    images = [await asyncio.to_thread(photo, f"{bench.run_id}-{i}", fmt) for i in range(count)]
    mean_mib = sum(map(len, images)) / len(images) / MIB
    result = Result(
        f"media_thumbnail_{fmt.lower()}",
        f"{count} {fmt} images of 2000x1500 ({mean_mib:.1f} MiB on average): "
        f"each uploaded, then its 96x96 scale and crop thumbnails asked for once "
        f"(first) and {THUMBNAIL_REPEATS}x more (cached)",
    )
    uploads: list[float] = []
    first: dict[str, list[float]] = {m: [] for m in METHODS}
    cached: dict[str, list[float]] = {m: [] for m in METHODS}

    async def thumbnail(mxc: str, method: str, samples: list[float]) -> None:
        start = time.perf_counter()
        try:
            _, got_type = await bench.mx.media(
                user, "thumbnail", mxc, {**THUMBNAIL_BOX, "method": method}
            )
        except REQUEST_ERRORS as e:
            _failed(bench, result, e)
            return
        samples.append((time.perf_counter() - start) * 1000)
        if not got_type.startswith("image/"):
            _failed(bench, result, f"{mxc}: thumbnail of type {got_type!r}")

    with bench.measure(result):
        began = time.perf_counter()
        for i, data in enumerate(images):
            if time.perf_counter() - began > bench.budget_seconds:
                result.note = f"time budget reached: {i} of {count} images"
                break
            start = time.perf_counter()
            try:
                mxc = await bench.mx.upload(
                    user, data, len(data), content_type, f"photo-{i}.{fmt.lower()}"
                )
            except REQUEST_ERRORS as e:
                _failed(bench, result, e)
                continue
            uploads.append((time.perf_counter() - start) * 1000)
            for method in METHODS:
                await thumbnail(mxc, method, first[method])
            for _ in range(THUMBNAIL_REPEATS):
                for method in METHODS:
                    await thumbnail(mxc, method, cached[method])
    result.samples_ms = {
        "upload": uploads,
        **{f"first_{m}": first[m] for m in METHODS},
        **{f"cached_{m}": cached[m] for m in METHODS},
    }
    result.figures = {"upload_p50_ms": percentile(uploads, 50)}
    for when, samples in (("first", first), ("cached", cached)):
        for method in METHODS:
            for q in (50, 99):
                result.figures[f"{when}_{method}_p{q}_ms"] = percentile(samples[method], q)
    return result
