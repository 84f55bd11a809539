"""``python -m bench.combine RESULT_DIR...``: several runs of the same servers as one table.

On a shared machine one run is noise; the same comparison repeated (``--baseline``, with
the servers' order alternated between runs) is read as the median of each figure per
server and database, the ratio of the medians, and the range of the per-run ratios. Prints
a Markdown table per database, with the load averages of the runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.report import ratio_pairs
from bench.scenarios import figures_for
from bench.stats import format_ratio, format_value, ratio


def _figures(result: dict[str, Any]) -> dict[str, float]:
    values: dict[str, float] = {
        k: v for k, v in result.get("figures", {}).items() if isinstance(v, int | float)
    }
    if isinstance(result.get("cpu_s"), int | float):
        values["cpu_s"] = result["cpu_s"]
    return values


def combine(directories: list[Path]) -> str:
    runs = [json.loads((d / "result.json").read_text()) for d in directories]
    out: list[str] = []
    for db in sorted({r["meta"]["db"] for r in runs}):
        mine = [r for r in runs if r["meta"]["db"] == db]
        servers = list(dict.fromkeys(s for r in mine for s in sorted(r["servers"])))
        if "ours" in servers:
            servers.remove("ours")
            servers.insert(0, "ours")
        pairs = ratio_pairs(servers)
        out.append(f"### {db}: {len(mine)} runs")
        out.append("")
        for r in mine:
            meta = r["meta"]
            order = ",".join(r["servers"])
            out.append(
                f"- {meta['timestamp']} ({order}): load {meta['loadavg_before']} before, "
                f"{meta['loadavg_after']} after"
            )
        out.append("")
        header = ["scenario", "figure", *(f"{s} (median)" for s in servers)]
        header += [f"{a}/{b} (median; runs)" for a, b in pairs]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        scenarios = list(
            dict.fromkeys(n for r in mine for s in r["servers"].values() for n in s["results"])
        )
        for scenario in scenarios:
            labels = {k: f"{f.label} ({f.unit})" for k, f in figures_for(scenario).items()}
            labels["cpu_s"] = "server CPU (s)"
            for key, label in labels.items():
                per_server: dict[str, list[float]] = {s: [] for s in servers}
                per_run: dict[tuple[str, str], list[float]] = {p: [] for p in pairs}
                for r in mine:
                    found = {
                        s: _figures(r["servers"][s]["results"].get(scenario, {})).get(key)
                        for s in servers
                        if s in r["servers"]
                    }
                    for s, v in found.items():
                        if v is not None:
                            per_server[s].append(v)
                    for a, b in pairs:
                        q = ratio(found.get(a), found.get(b))
                        if q is not None:
                            per_run[(a, b)].append(q)
                medians = {s: statistics.median(v) if v else None for s, v in per_server.items()}
                if all(m is None for m in medians.values()):
                    continue
                row = [scenario, label, *(format_value(medians[s]) for s in servers)]
                for a, b in pairs:
                    runs_text = ", ".join(format_ratio(q) for q in per_run[(a, b)])
                    row.append(f"{format_ratio(ratio(medians[a], medians[b]))}; {runs_text}")
                out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__)
        return 2
    print(combine([Path(a) for a in args]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
