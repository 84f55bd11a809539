"""The benchmark's percentile and ratio helpers (no servers, no timing)."""

from __future__ import annotations

import pytest

from bench.stats import (
    format_ratio,
    format_value,
    mib_per_s,
    percentile,
    rate,
    ratio,
    summarize,
)


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 99) == pytest.approx(3.97)


def test_percentile_ignores_input_order_and_handles_one_or_no_value() -> None:
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_percentile_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize() -> None:
    summary = summarize([float(x) for x in range(1, 101)])
    assert summary["n"] == 100
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["max"] == 100
    assert summary["mean"] == pytest.approx(50.5)
    assert summarize([])["p50"] is None


def test_ratio_and_rate() -> None:
    assert ratio(10.0, 100.0) == pytest.approx(0.1)
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert rate(50, 2.0) == 25
    assert rate(5, 0.0) is None
    assert mib_per_s(10 * 1024 * 1024, 2.0) == pytest.approx(5.0)
    assert mib_per_s(1, 0.0) is None


def test_formatting() -> None:
    assert format_value(None) == "-"
    assert format_value(0) == "0"
    assert format_value(103.4) == "103"
    assert format_value(0.01234) == "0.0123"
    assert format_value(1234.5) == "1234"
    assert format_ratio(0.1) == "0.10x"
    assert format_ratio(None) == "-"
