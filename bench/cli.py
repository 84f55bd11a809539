"""``./bench.sh [options]``: the scenarios against our server and Synapse, one at a time."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import uvloop

from bench import report
from bench.client import Matrix
from bench.procstat import ProcessWatch
from bench.progress import log
from bench.querycount import QueryLog, count_queries, describe
from bench.scenarios import DEFAULT_SCENARIOS, SCALE_SCENARIOS, SCENARIOS, Bench
from bench.servers import (
    REPO,
    BaselineTree,
    ManagedServer,
    OurServer,
    PostgresDatabase,
    Server,
    SynapseServer,
)

SERVERS = ("ours", "synapse")
# ``--baseline REV``: our server at another revision, started as a third server.
BASELINE = "baseline"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.sh",
        description="The same client-API workload against this homeserver "
        "and Synapse, side by side. Writes bench/results/<timestamp>/{result.json,table.txt,"
        "latency.png}.",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated, run in this order (default: ours,synapse)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all but federation)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies user, room and event counts (default 1.0)",
    )
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="database of the servers started here (postgresql: a fresh "
        "database per server on 127.0.0.1:5432 as postgres, dropped after)",
    )
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="benchmark a server already running there instead of starting "
        "one (registration must be open, rate limits off); NAME defaults to "
        "the next of --servers; repeat for two servers",
    )
    parser.add_argument(
        "--pid",
        action="append",
        default=[],
        metavar="[NAME=]PID",
        help="PID of a --url server, to read its CPU and RSS from /proc",
    )
    parser.add_argument(
        "--throughput-seconds",
        type=float,
        default=10.0,
        help="duration of each send-throughput level (default 10)",
    )
    parser.add_argument(
        "--presence",
        choices=("off", "on"),
        default="off",
        help="presence on both servers or on neither (default off)",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=60.0,
        help="a latency scenario stops sending after this long and reports "
        "what it measured (default 60)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample our server with py-spy during the measured parts",
    )
    parser.add_argument(
        "--profile-rate",
        type=int,
        default=100,
        metavar="HZ",
        help="py-spy samples per second with --profile (default 100; more "
        "slows the server down while it is sampled)",
    )
    parser.add_argument(
        "--count-queries",
        action="store_true",
        help="also count SQL statements per send and per sync wake-up on our "
        "server (runs it with statement logging; only for servers started here)",
    )
    parser.add_argument(
        "--pin",
        choices=("on", "off"),
        default="off",
        help="servers started here on every core but the last, this client "
        "on the last (with 2 cores or more; default off); see bench/README.md",
    )
    parser.add_argument(
        "--fanout-sizes",
        default="50,200",
        help="comma-separated member counts of the fan-out rooms, each multiplied by "
        "--scale (default 50,200; e.g. 200,1000)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run our server at git revision REV (a detached worktree on this venv) "
        "as the server 'baseline', after ours; the table adds ours/baseline ratios",
    )
    parser.add_argument(
        "--sliding-rooms",
        type=int,
        metavar="N",
        help="rooms of the sliding_sync scenario's user (default 1000 times --scale)",
    )
    parser.add_argument(
        "--big-fanout-sizes",
        default="1000,5000",
        help="member counts of the big_fanout rooms, times --scale (default 1000,5000)",
    )
    parser.add_argument(
        "--rooms-per-user",
        default="1000,5000",
        help="room counts of many_rooms, times --scale (default 1000,5000)",
    )
    parser.add_argument(
        "--listener-cap",
        type=int,
        default=1000,
        help="at most this many members of a big_fanout room long-poll (default 1000)",
    )
    parser.add_argument(
        "--idle-longpolls", type=int, default=2000, help="idle: long-polls, times --scale"
    )
    parser.add_argument(
        "--idle-websockets",
        type=int,
        default=10000,
        help="idle: WebSockets (servers that have them), times --scale",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=120.0,
        help="seconds of the mixed load (default 120; the issue's run: 600)",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    try:
        args.fanout_sizes = [int(s) for s in args.fanout_sizes.split(",") if s]
    except ValueError:
        parser.error("--fanout-sizes takes comma-separated member counts")
    if not args.fanout_sizes or min(args.fanout_sizes) < 2:
        parser.error("--fanout-sizes: each room needs at least 2 members")
    for scenario in args.scenarios:
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if args.baseline is not None:
        if args.url:
            parser.error("--baseline starts its server here: not with --url")
        if BASELINE not in args.servers:
            at = args.servers.index("ours") + 1 if "ours" in args.servers else 0
            args.servers.insert(at, BASELINE)
    elif BASELINE in args.servers:
        parser.error("the server 'baseline' needs --baseline REV")
    if not args.url:
        for name in args.servers:
            if name not in (*SERVERS, BASELINE):
                parser.error(f"unknown server {name!r}; known: {', '.join(SERVERS)}")
    try:
        args.big_fanout_sizes = [int(s) for s in args.big_fanout_sizes.split(",") if s]
        args.rooms_per_user = [int(s) for s in args.rooms_per_user.split(",") if s]
    except ValueError:
        parser.error("--big-fanout-sizes and --rooms-per-user take comma-separated counts")
    if args.duration <= 0 or args.listener_cap < 1:
        parser.error("--duration and --listener-cap must be positive")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return args


def _named(values: list[str], defaults: list[str]) -> dict[str, str]:
    named: dict[str, str] = {}
    for i, value in enumerate(values):
        name, sep, rest = value.partition("=")
        if sep and not name.startswith("http"):
            named[name] = rest
        else:
            named[defaults[i] if i < len(defaults) else f"server{i + 1}"] = value
    return named


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: servers stop by PID


async def run_server(
    server: Server, args: argparse.Namespace, run_id: str, directory: Path, query_log: Path | None
) -> dict[str, Any]:
    watch = ProcessWatch(server.pid)
    profiler = None
    if args.profile and server.name == "ours" and server.pid:
        from bench.profile import PySpy

        profiler = PySpy(server.pid, directory, rate=args.profile_rate)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    results: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=connector) as session:
        mx = Matrix(session, server.base_url)
        bench = Bench(
            mx,
            watch,
            server.name,
            args.scale,
            run_id,
            args.throughput_seconds,
            args.budget_seconds,
            profiler,
            args.fanout_sizes,
        )
        bench.sliding_rooms = args.sliding_rooms
        from bench.scenario_scale import ScaleOptions

        bench.scale_options = ScaleOptions(
            fanout_sizes=tuple(args.big_fanout_sizes),
            rooms_per_user=tuple(args.rooms_per_user),
            listener_cap=args.listener_cap,
            idle_longpolls=args.idle_longpolls,
            idle_websockets=args.idle_websockets,
            duration_s=args.duration,
        )
        for scenario in args.scenarios:
            started = time.monotonic()
            try:
                for result in await getattr(bench, scenario)():
                    results[result.name] = result.as_json()
                    log(
                        f"{server.name}: {result.name}: "
                        + ", ".join(
                            f"{k}={v:.4g}" for k, v in result.figures.items() if v is not None
                        )
                        + (f", errors={result.errors}" if result.errors else "")
                        + (f" ({result.note})" if result.note else "")
                    )
            except Exception as e:  # one failed scenario must not lose the others
                log(f"{server.name}: {scenario} FAILED: {e!r}")
                traceback.print_exc()
                results[scenario] = {"error": repr(e), "figures": {}, "errors": 0}
            log(f"{server.name}: {scenario} took {time.monotonic() - started:.0f} s")
        if query_log is not None:
            extra["queries"] = await count_queries(mx, QueryLog(query_log), run_id, server.name)
    if profiler is not None and profiler.outputs:
        from bench.profile import hottest

        text = hottest(profiler.outputs)
        (directory / "profile_top.txt").write_text(text)
        extra["profile_top"] = text
    usage = watch.totals()
    return {
        "url": server.base_url,
        "pid": server.pid,
        "version": server.version,
        "results": results,
        "totals": {"cpu_s": usage.cpu_s, "peak_rss_mb": usage.peak_rss_mb},
        "peak_rss_resettable": watch.can_reset,
        **extra,
    }


def _pin_client() -> set[int] | None:
    """Moves this process to the last core it may use and returns the others, for the
    servers started here; None with a single core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(0, {cpus[-1]})
    log(f"this client on core {cpus[-1]}, servers on {','.join(map(str, cpus[:-1]))}")
    return set(cpus[:-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    directory = args.results_dir / stamp
    directory.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(3)
    loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
    log(
        f"results in {directory}; load average {' '.join(loadavg_before)} on {os.cpu_count()} cores"
    )
    server_cpus = _pin_client() if args.pin == "on" else None
    urls = _named(args.url, args.servers)
    pids = _named(args.pid, list(urls) or args.servers)
    names = list(urls) or args.servers
    run: dict[str, Any] = {
        "meta": {
            "timestamp": stamp,
            "db": "external" if urls else args.db,
            "scale": args.scale,
            "scenarios": args.scenarios,
            "servers": names,
            "throughput_seconds": args.throughput_seconds,
            "presence": args.presence,
            "loadavg_before": " ".join(loadavg_before),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "argv": sys.argv[1:],
            "server_cpus": sorted(server_cpus) if server_cpus else None,
            "client_cpus": sorted(os.sched_getaffinity(0)),
        },
        "servers": {},
    }
    baseline: BaselineTree | None = None
    if args.baseline is not None:
        baseline = BaselineTree(args.baseline, Path(tempfile.mkdtemp(prefix="bench-baseline-")))
        baseline.create()
        run["meta"]["baseline"] = baseline.commit
        # The federation scenario starts its own server of that tree.
        os.environ["BENCH_BASELINE_TREE"] = str(baseline.path)
    try:
        _run_servers(args, names, urls, pids, server_cpus, run, run_id, directory, baseline)
    finally:
        if baseline is not None:
            baseline.remove()
            shutil.rmtree(baseline.path.parent, ignore_errors=True)
    text = report.write(run, directory)
    print(text)
    for name, info in run["servers"].items():
        if "queries" in info:
            (directory / f"queries-{name}.txt").write_text(describe(info["queries"]))
            print(f"{name}: " + describe(info["queries"]).split("\n\n")[0] + "\n")
        if "profile_top" in info:
            print(f"{name} profile ({directory / 'profile_top.txt'}):\n{info['profile_top']}")
    log(f"done in {run['meta']['wall_s']:.0f} s: {directory}")
    return 0


def _run_servers(
    args: argparse.Namespace,
    names: list[str],
    urls: dict[str, str],
    pids: dict[str, str],
    server_cpus: set[int] | None,
    run: dict[str, Any],
    run_id: str,
    directory: Path,
    baseline: BaselineTree | None,
) -> None:
    started = time.monotonic()
    appservice = any(s in SCALE_SCENARIOS for s in args.scenarios)
    if appservice:
        from bench.scenario_scale import raise_fd_limit

        # Thousands of connections: the servers started here inherit the raised limit.
        log(f"open-file limit raised to {raise_fd_limit()}")
    for name in names:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        database: PostgresDatabase | None = None
        server: Server | None = None
        query_log: Path | None = None
        try:
            if name in urls:
                server = Server(name, urls[name], int(pids[name]) if name in pids else None)
            else:
                if args.db == "postgresql":
                    database = PostgresDatabase(name)
                    database.create()
                if name in ("ours", BASELINE):
                    source = baseline.path if name == BASELINE and baseline else REPO
                    ours = OurServer(
                        workdir,
                        database.asyncpg_url if database else None,
                        args.presence == "on",
                        name=name,
                        source=source,
                        appservice=appservice,
                    )
                    if args.count_queries:
                        query_log = workdir / "queries.log"
                        ours.wrapper_module = ["-m", "bench.querylog", str(query_log)]
                    server = ours
                else:
                    server = SynapseServer(
                        workdir,
                        database.name if database else None,
                        args.presence == "on",
                        appservice=appservice,
                    )
            log(f"{name}: starting")
            if isinstance(server, ManagedServer):
                server.cpus = server_cpus
            server.start()
            run["servers"][name] = uvloop.run(
                run_server(server, args, run_id, directory, query_log)
            )
        finally:
            if server is not None:
                server.stop()
            if database is not None:
                database.drop()
            if server is not None and isinstance(server, OurServer | SynapseServer):
                log_path = server.log_path
                if log_path.exists():
                    shutil.copy(log_path, directory / f"{name}-server.log")
                own_log = workdir / "homeserver.log"  # Synapse's own log file
                if own_log.exists():
                    shutil.copy(own_log, directory / f"{name}-homeserver.log")
            shutil.rmtree(workdir, ignore_errors=True)
    run["meta"]["loadavg_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    run["meta"]["wall_s"] = time.monotonic() - started
