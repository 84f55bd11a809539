"""The progress display: timestamped lines on stderr."""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def log(message: str) -> None:
    elapsed = time.monotonic() - _START
    print(
        f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {message}", file=sys.stderr, flush=True
    )
