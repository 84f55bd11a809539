"""A server process's CPU seconds and peak RSS, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` (all its threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set size since start or since the last ``reset_peak``."""
    return _status_kib(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux 4.0+); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Usage:
    cpu_s: float | None
    peak_rss_mb: float | None


class ProcessWatch:
    """Measures one phase of a process: CPU seconds used and the peak RSS reached in it.

    Peaks of every phase are also kept, so the whole run's peak survives the resets.
    """

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.run_peak_mb = 0.0
        self._cpu0 = 0.0
        self.start_cpu = cpu_seconds(pid) if pid else None
        self.can_reset = True

    def begin(self) -> None:
        if self.pid is None:
            return
        self.run_peak_mb = max(self.run_peak_mb, peak_rss_mb(self.pid))
        self.can_reset = reset_peak(self.pid) and self.can_reset
        self._cpu0 = cpu_seconds(self.pid)

    def end(self) -> Usage:
        if self.pid is None:
            return Usage(None, None)
        peak = peak_rss_mb(self.pid)
        self.run_peak_mb = max(self.run_peak_mb, peak)
        return Usage(cpu_seconds(self.pid) - self._cpu0, peak)

    def totals(self) -> Usage:
        if self.pid is None or self.start_cpu is None:
            return Usage(None, None)
        self.run_peak_mb = max(self.run_peak_mb, peak_rss_mb(self.pid))
        return Usage(cpu_seconds(self.pid) - self.start_cpu, self.run_peak_mb)
