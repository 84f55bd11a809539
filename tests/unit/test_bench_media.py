"""The media scenario's files and the table's figure lookup (no servers, no timing)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bench.media_files import blob, photo, stream
from bench.scenarios import FIGURES, figures_for


def test_blob_is_deterministic_per_seed() -> None:
    assert len(blob(1000, "a")) == 1000
    assert blob(1000, "a") == blob(1000, "a")
    assert blob(1000, "a") != blob(1000, "b")


def test_stream_yields_the_size_in_distinct_chunks() -> None:
    chunks = list(stream(10_500, "s", chunk=1000))
    assert sum(map(len, chunks)) == 10_500
    assert [len(c) for c in chunks[-2:]] == [1000, 500]
    assert len(set(chunks[:-1])) == len(chunks) - 1  # no two full chunks alike
    assert b"".join(stream(10_500, "s", chunk=1000)) == b"".join(chunks)
    assert b"".join(stream(10_500, "t", chunk=1000)) != b"".join(chunks)
    assert list(stream(0, "s")) == []


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_photo_is_a_deterministic_image_of_the_size(fmt: str) -> None:
    data = photo("seed-1", fmt, (200, 150))
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == fmt
        assert image.size == (200, 150)
        assert image.mode == "RGB"
    assert photo("seed-1", fmt, (200, 150)) == data
    assert photo("seed-2", fmt, (200, 150)) != data


def test_photo_rejects_other_formats() -> None:
    with pytest.raises(ValueError):
        photo("seed-1", "GIF", (20, 15))


def test_figures_for_takes_the_longest_matching_prefix() -> None:
    assert figures_for("fanout_200") is FIGURES["fanout"]
    assert figures_for("initial_sync") is FIGURES["initial_sync"]
    assert figures_for("media_upload_10mib") is FIGURES["media_upload"]
    assert figures_for("media_download_100mib") is FIGURES["media_download"]
    assert figures_for("media_thumbnail_png") is FIGURES["media_thumbnail"]
    assert figures_for("ws_websocket") is FIGURES["ws"]
    assert figures_for("media") == {}  # a scenario that failed as a whole


def test_media_rates_are_higher_is_better_and_latencies_lower() -> None:
    upload = FIGURES["media_upload"]
    assert upload["mib_per_s"].higher_is_better
    assert not upload["p50_ms"].higher_is_better
    assert not any(f.higher_is_better for f in FIGURES["media_thumbnail"].values())
