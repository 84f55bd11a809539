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
        subprocess.run([str(TOOLS_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                        f"py-spy=={PY_SPY_VERSION}"], check=True)
    return binary


class PySpy:
    """``py-spy record`` attached to ``pid`` from the start to the end of each measured part."""

    def __init__(self, pid: int, directory: Path, rate: int = 250) -> None:
        self.pid = pid
        self.directory = directory
        self.rate = rate
        self.binary = ensure_py_spy()
        self.outputs: list[Path] = []

    def __call__(self, name: str) -> Callable[[], None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        output = self.directory / f"profile_{name}.txt"
        # --nonblocking: the server is never paused to be sampled, so latency is not skewed.
        proc = subprocess.Popen(
            [str(self.binary), "record", "--pid", str(self.pid), "--rate", str(self.rate),
             "--format", "raw", "--function", "--nonblocking", "-o", str(output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

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
    """Self and inclusive sample shares per function over collapsed-stack files."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [f for f in stack.split(";") if "(" in f and not f.startswith(
                ("process ", "thread "))]
            if not frames:
                continue
            total += count
            own[_short(frames[-1])] += count
            for frame in set(map(_short, frames)):
                inclusive[frame] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples (non-idle) from {', '.join(p.name for p in paths)}", "",
             f"top {top} by own time (the function itself, not its callees):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    ours = [(f, c) for f, c in inclusive.most_common()
            if any(part in f for part in ("homeserver/", "client_api/"))]
    lines += ["", f"top {top} of our own code by inclusive time (with callees):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in ours[:top]]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``name (/long/path/site-packages/pkg/mod.py:12)`` -> ``name (pkg/mod.py:12)``."""
    name, _, location = frame.partition(" (")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in location:
            location = location.split(marker, 1)[1]
            break
    return f"{name} ({location}"
