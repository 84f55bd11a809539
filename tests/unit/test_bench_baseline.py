"""The benchmark's comparison of revisions: which ratios a table shows, the argument
checks of --baseline, and several runs read as medians (no servers, no timing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.cli import parse_args
from bench.combine import combine
from bench.report import ratio_pairs, table


def test_ratio_pairs() -> None:
    assert ratio_pairs(["ours", "synapse"]) == [("ours", "synapse")]
    assert ratio_pairs(["ours", "baseline"]) == [("ours", "baseline")]
    assert ratio_pairs(["baseline", "ours"]) == [("baseline", "ours")]
    assert ratio_pairs(["ours", "baseline", "synapse"]) == [
        ("ours", "baseline"),
        ("ours", "synapse"),
    ]
    assert ratio_pairs(["ours"]) == []


def test_baseline_is_run_after_ours() -> None:
    args = parse_args(["--baseline", "HEAD~1"])
    assert args.servers == ["ours", "baseline", "synapse"]
    args = parse_args(["--servers", "synapse,ours", "--baseline", "HEAD~1"])
    assert args.servers == ["synapse", "ours", "baseline"]
    # Given in --servers, its place is kept (to alternate the order between runs).
    args = parse_args(["--servers", "baseline,ours", "--baseline", "HEAD~1"])
    assert args.servers == ["baseline", "ours"]


def test_baseline_arguments_are_checked() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--servers", "ours,baseline"])  # no revision
    with pytest.raises(SystemExit):
        parse_args(["--baseline", "HEAD~1", "--url", "http://127.0.0.1:8008"])


def run(stamp: str, order: list[str], msgs: dict[str, float]) -> dict[str, Any]:
    return {
        "meta": {
            "timestamp": stamp,
            "db": "sqlite",
            "scale": 1.0,
            "loadavg_before": "1 1 1",
            "loadavg_after": "2 2 2",
        },
        "servers": {
            name: {
                "url": "http://127.0.0.1:1",
                "pid": 1,
                "version": name,
                "results": {
                    "throughput_4": {
                        "figures": {"msgs_per_s": msgs[name]},
                        "cpu_s": 1.0,
                        "errors": 0,
                    }
                },
                "totals": {"cpu_s": 1.0, "peak_rss_mb": 100.0},
            }
            for name in order
        },
    }


def test_a_table_of_three_servers_has_both_ratios() -> None:
    text = table(
        run("t", ["ours", "baseline", "synapse"], {"ours": 300, "baseline": 200, "synapse": 100})
    )
    assert "ratio = ours / baseline, ours / synapse" in text
    [line] = [row for row in text.splitlines() if "sends accepted/s" in row]
    assert line.split()[-2:] == ["1.5x", "3.0x"]


def test_runs_combine_into_medians(tmp_path: Path) -> None:
    runs = [
        run("a", ["ours", "baseline"], {"ours": 100, "baseline": 200}),
        run("b", ["baseline", "ours"], {"ours": 300, "baseline": 300}),
        run("c", ["ours", "baseline"], {"ours": 200, "baseline": 100}),
    ]
    directories = []
    for r in runs:
        directory = tmp_path / r["meta"]["timestamp"]
        directory.mkdir()
        (directory / "result.json").write_text(json.dumps(r))
        directories.append(directory)
    text = combine(directories)
    assert "### sqlite: 3 runs" in text
    [line] = [row for row in text.splitlines() if "sends accepted/s" in row]
    cells = [c.strip() for c in line.strip("|").split("|")]
    # medians 200 and 200; per-run ratios in the runs' order
    assert cells[2:] == ["200", "200", "1.0x; 0.50x, 1.0x, 2.0x"]
