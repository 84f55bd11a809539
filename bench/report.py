"""The outputs of a run: result.json, table.txt and latency.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.scenarios import USAGE_FIGURES, figures_for
from bench.stats import format_ratio, format_value, ratio


def ratio_pairs(servers: list[str]) -> list[tuple[str, str]]:
    """The ratios a table shows: the first server over the second when there are two;
    with more (``--baseline``), ours over each of the others."""
    if len(servers) == 2:
        return [(servers[0], servers[1])]
    if len(servers) > 2 and "ours" in servers:
        return [("ours", other) for other in servers if other != "ours"]
    return []


def table(run: dict[str, Any]) -> str:
    """Each figure for every server, and the ratios of ``ratio_pairs``."""
    servers = list(run["servers"])
    meta = run["meta"]
    lines = [
        f"bench {meta['timestamp']}  db={meta['db']}  scale={meta['scale']}  "
        f"presence={meta.get('presence', 'off')}  "
        f"load before={meta['loadavg_before']}  after={meta['loadavg_after']}",
    ]
    if meta.get("server_cpus"):
        lines.append(
            f"  cores: servers started here on {meta['server_cpus']}, this client on "
            f"{meta['client_cpus']}"
        )
    for name in servers:
        info = run["servers"][name]
        lines.append(
            f"  {name}: {info['version']} at {info['url']}"
            f"{'' if info.get('pid') else ' (no PID: no CPU/RSS)'}"
        )
    pairs = ratio_pairs(servers)
    if pairs:
        lines.append(
            "ratio = "
            + ", ".join(f"{a} / {b}" for a, b in pairs)
            + ";  lower is better for ms, s, MB; higher for 1/s and MiB/s"
        )
    ratio_headers = ["ratio"] if len(pairs) == 1 else [f"{a}/{b}" for a, b in pairs]
    columns = {name: i for i, name in enumerate(servers)}
    header = ["scenario", "figure", "unit", *servers, *ratio_headers]
    rows: list[list[str]] = []
    names: list[str] = []
    notes: list[str] = []
    for name in servers:
        for result in run["servers"][name]["results"]:
            if result not in names:
                names.append(result)
    for result_name in names:
        per_server = [run["servers"][s]["results"].get(result_name) for s in servers]
        errors = [r.get("error") for r in per_server if r and r.get("error")]
        figures = {**figures_for(result_name), **USAGE_FIGURES}
        for key, figure in figures.items():
            values: list[float | None] = []
            for r in per_server:
                if r is None:
                    values.append(None)
                elif key in USAGE_FIGURES:
                    values.append(r.get(key))
                else:
                    values.append(r["figures"].get(key))
            row = [result_name, figure.label, figure.unit, *(format_value(v) for v in values)]
            row += [format_ratio(ratio(values[columns[a]], values[columns[b]])) for a, b in pairs]
            rows.append(row)
        if any(r and r.get("errors") for r in per_server):
            rows.append(
                [
                    result_name,
                    "missed or failed requests",
                    "",
                    *(str(r["errors"]) if r else "-" for r in per_server),
                ]
                + [""] * len(pairs)
            )
        for s, r in zip(servers, per_server, strict=True):
            if r and r.get("note"):
                notes.append(f"{result_name}, {s}: {r['note']}")
        for error in errors:
            rows.append(
                [result_name, f"FAILED: {error[:80]}", "", *("" for _ in servers)]
                + [""] * len(pairs)
            )
    totals = [run["servers"][s]["totals"] for s in servers]
    for key, label, unit in (
        ("cpu_s", "server CPU, whole run", "s"),
        ("peak_rss_mb", "server peak RSS, whole run", "MB"),
    ):
        values = [t.get(key) for t in totals]
        row = ["all", label, unit, *(format_value(v) for v in values)]
        row += [format_ratio(ratio(values[columns[a]], values[columns[b]])) for a, b in pairs]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = [*lines, ""]
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    out.append("  ".join("-" * w for w in widths))
    previous = ""
    for row in rows:
        shown = [row[0] if row[0] != previous else "", *row[1:]]
        previous = row[0]
        out.append(
            "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(shown, widths, strict=True))
            ).rstrip()
        )
    for note in notes:
        out.append(f"note: {note}")
    return "\n".join(out) + "\n"


def plot(run: dict[str, Any], path: Path) -> None:
    """Box plots (whiskers at p1 and p99) of every latency sample, the servers side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = list(run["servers"])
    panels: list[tuple[str, str]] = []
    for s in servers:
        for result_name, result in run["servers"][s]["results"].items():
            for series in result.get("samples_ms", {}):
                if (result_name, series) not in panels:
                    panels.append((result_name, series))
    if not panels:
        return
    columns = min(4, len(panels))
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, (result_name, series) in zip(axes.flat, panels, strict=False):
        data, labels = [], []
        for s in servers:
            result = run["servers"][s]["results"].get(result_name) or {}
            samples = result.get("samples_ms", {}).get(series) or []
            data.append([max(x, 1e-3) for x in samples] or [float("nan")])
            labels.append(f"{s}\n(n={len(samples)})")
        boxes = ax.boxplot(
            data,
            whis=(1, 99),
            patch_artist=True,
            widths=0.6,
            flierprops={"markersize": 2, "alpha": 0.4},
        )
        ax.set_xticks(range(1, len(labels) + 1), labels)
        for patch, color in zip(boxes["boxes"], colors, strict=False):
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        ax.set_yscale("log")
        ax.set_title(f"{result_name}: {series}", fontsize=10)
        ax.set_ylabel("ms (log)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    meta = run["meta"]
    fig.suptitle(
        f"latency, {' vs '.join(servers)} ({meta['db']}, scale {meta['scale']}); "
        "box p25-p75, line p50, whiskers p1-p99",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(run: dict[str, Any], directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "result.json").write_text(json.dumps(run, indent=1))
    text = table(run)
    (directory / "table.txt").write_text(text)
    plot(run, directory / "latency.png")
    from bench.scenario_scale import plot as plot_scale

    plot_scale(run, directory)
    return text
