"""The scale scenarios' wiring and plots (no servers, no timing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.cli import parse_args
from bench.scenarios import DEFAULT_SCENARIOS, SCALE_SCENARIOS, figures_for
from bench.servers import APPSERVICE_TOKEN, APPSERVICE_USER_PREFIX, write_appservice


def test_scale_results_find_their_figures() -> None:
    assert "cpu_per_delivery_ms" in figures_for("bigfanout_paced_1000")
    assert "cpu_per_delivery_ms" in figures_for("bigfanout_burst_5000")
    assert "leave_p50_ms" in figures_for("manyrooms_5000")
    assert "kb_per_websocket" in figures_for("idle")
    assert "rss_growth_pct" in figures_for("mixed")


def test_scale_scenarios_only_when_asked_for() -> None:
    assert not set(SCALE_SCENARIOS) & set(DEFAULT_SCENARIOS)
    args = parse_args(["--scenarios", "big_fanout,mixed", "--duration", "30"])
    assert args.scenarios == ["big_fanout", "mixed"]
    assert args.duration == 30
    assert args.big_fanout_sizes == [1000, 5000]


@pytest.mark.parametrize(
    "argv",
    [["--duration", "0"], ["--big-fanout-sizes", "many"], ["--listener-cap", "0"]],
)
def test_scale_options_are_checked(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_appservice_registration_covers_the_bench_users(tmp_path: Path) -> None:
    data = yaml.safe_load(write_appservice(tmp_path).read_text())
    assert data["as_token"] == APPSERVICE_TOKEN
    assert data["url"] is None
    assert data["namespaces"]["users"][0]["regex"] == f"@{APPSERVICE_USER_PREFIX}.*"


def test_growth_and_mixed_plots_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.scenario_scale import plot

    def server(scale: float) -> dict[str, object]:
        results: dict[str, object] = {
            f"bigfanout_paced_{n}": {"figures": {"p99_ms": n * scale, "cpu_per_delivery_ms": 1}}
            for n in (50, 200)
        }
        results["manyrooms_100"] = {"figures": {"incr_p50_ms": 3.0, "full_ms": 90.0}}
        results["mixed"] = {
            "figures": {},
            "series": {"window_s": 10, "delivery_p99_ms": [5.0, 6.0], "rss_mb": [100.0, 101.0]},
        }
        return {"results": results}

    run = {
        "meta": {"db": "sqlite", "scale": 1},
        "servers": {"ours": server(0.1), "synapse": server(1.0)},
    }
    plot(run, tmp_path)
    assert (tmp_path / "growth.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "mixed.png").read_bytes()[:4] == b"\x89PNG"
