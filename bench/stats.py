"""Percentiles, summaries and ratios: pure functions (tests/unit/test_bench_stats.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    The same definition as numpy's default (``method="linear"``); ``None`` for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99, max and mean of ``samples`` (all ``None`` when there are none)."""
    return {
        "n": float(len(samples)),
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "max": float(max(samples)) if samples else None,
        "mean": sum(samples) / len(samples) if samples else None,
    }


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """``ours / theirs``, or ``None`` when either is missing or ``theirs`` is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def rate(count: int, seconds: float) -> float | None:
    """Events per second, ``None`` for an empty interval."""
    if seconds <= 0:
        return None
    return count / seconds


def mib_per_s(size_bytes: int, seconds: float) -> float | None:
    """Throughput in MiB (2**20 bytes) per second, ``None`` for an empty interval."""
    if seconds <= 0:
        return None
    return size_bytes / (1024 * 1024) / seconds


def format_value(value: float | None, digits: int = 3) -> str:
    """A figure for the table: ``-`` when missing, otherwise ``digits`` significant digits."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:.{decimals}f}"


def format_ratio(value: float | None) -> str:
    """A ratio for the table: ``0.12x``, ``3.4x``, ``-`` when missing."""
    if value is None:
        return "-"
    return f"{format_value(value, 2)}x"
