"""Sampling our server with py-spy during the measured parts, and the hottest functions."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.progress import log

PY_SPY_VERSION = "0.4.3"
TOOLS_VENV = Path(__file__).resolve().parent / ".venv-tools"


def ensure_py_spy() -> Path:
    binary = TOOLS_VENV / "bin" / "py-spy"
    if not binary.exists():
        log(f"installing py-spy=={PY_SPY_VERSION} into {TOOLS_VENV} (once)")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(TOOLS_VENV)], check=True)
        subprocess.run(
            [
                str(TOOLS_VENV / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                f"py-spy=={PY_SPY_VERSION}",
            ],
            check=True,
        )
    return binary


class PySpy:
    """``py-spy record`` attached to ``pid`` from the start to the end of each measured part."""

    def __init__(self, pid: int, directory: Path, rate: int = 100) -> None:
        self.pid = pid
        self.directory = directory
        self.rate = rate
        self.binary = ensure_py_spy()
        self.outputs: list[Path] = []

    def __call__(self, name: str) -> Callable[[], None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        output = self.directory / f"profile_{name}.txt"
        # Blocking sampling (the default): exact stacks, at the cost of brief pauses of the
        # server, so the figures of a profiled run are not the benchmark's figures.
        proc = subprocess.Popen(
            [
                str(self.binary),
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--threads",
                "-o",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def stop() -> None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            if output.exists():
                self.outputs.append(output)
            else:
                log(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")

        return stop


def hottest(paths: list[Path], top: int = 15) -> str:
    """Sample shares per function over collapsed-stack files (``--threads``), split into the
    event-loop thread and the other threads (aiosqlite connections, ``to_thread`` workers)."""
    stacks: list[tuple[str, list[str], int]] = []
    main_threads: set[str] = set()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            parts = stack.split(";")
            thread = next((p for p in parts if p.startswith("thread ")), "thread ?")
            frames = [p for p in parts if "(" in p and not p.startswith(("process ", "thread "))]
            if not frames or _is_wait(frames[-1]):
                continue
            if any(f.startswith("_run_module_as_main") for f in frames):
                main_threads.add(thread)
            stacks.append((thread, frames, int(count_text)))
    total = sum(count for _, _, count in stacks)
    if not total:
        return "no samples\n"
    main = [(f, c) for t, f, c in stacks if t in main_threads]
    other = [(f, c) for t, f, c in stacks if t not in main_threads]
    main_total = sum(c for _, c in main)
    names = ", ".join(p.name for p in paths)
    lines = [
        f"{total} non-idle samples (waits for work left out) from {names}: "
        f"{100 * main_total / total:.1f}% in the event-loop thread, "
        f"{100 * (total - main_total) / total:.1f}% in other threads",
        "",
    ]
    for title, group in (
        ("all threads", main + other),
        ("event-loop thread", main),
        ("other threads", other),
    ):
        own: collections.Counter[str] = collections.Counter()
        for frames, count in group:
            own[_function(frames[-1])] += count
        lines.append(
            f"{title}: top {top} by own time (the function itself, not its callees), "
            "% of all samples:"
        )
        lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
        lines.append("")
    inclusive: collections.Counter[str] = collections.Counter()
    for _, frames, count in stacks:
        for frame in set(map(_function, frames)):
            inclusive[frame] += count
    ours = [
        (f, c)
        for f, c in inclusive.most_common()
        if any(part in f for part in ("homeserver/", "client_api/"))
        and not f.startswith(("<module>", "main ", "cmd_run "))
    ]
    lines.append(f"our own code: top {top} by inclusive time (with callees), % of all samples:")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in ours[:top]]
    return "\n".join(lines) + "\n"


# Threads blocked here wait for work; py-spy does not always see them as idle.
WAITS = ("_connection_worker_thread (aiosqlite/core.py:59)", "Condition.wait (threading.py:")


def _is_wait(frame: str) -> bool:
    return _short(frame).startswith(WAITS)


def _function(frame: str) -> str:
    """``name (pkg/mod.py:12)`` -> ``name (pkg/mod.py)``: samples summed over a function."""
    short = _short(frame)
    return short.rsplit(":", 1)[0] + ")" if ":" in short else short


def _short(frame: str) -> str:
    """``name (/long/path/site-packages/pkg/mod.py:12)`` -> ``name (pkg/mod.py:12)``."""
    name, _, location = frame.partition(" (")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in location:
            location = location.split(marker, 1)[1]
            break
    return f"{name} ({location}"
