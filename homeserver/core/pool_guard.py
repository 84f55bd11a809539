"""Who holds a pooled database connection, and what happens when none is free.

A request that waits for something other than the database (a wake-up, a lock, another
request's read, the network) while it holds a pooled connection keeps that connection from
everyone else for as long as it waits. A few hundred long-polls woken at once then hold
every connection of the pool and queue for one more: nothing moves until the pool's
timeout. So the places that wait for others call ``check_not_holding``, which fails loudly
in tests (``STRICT``) and logs in production, and a request that finds no connection free
in time gets ``PoolExhausted`` (a 503 with ``Retry-After`` to the client), not a 500.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Protocol

logger = logging.getLogger(__name__)

# Tests set it (tests/conftest.py), as does HOMESERVER_STRICT_POOL=1: holding a connection
# across a wait then raises instead of being logged.
STRICT = os.environ.get("HOMESERVER_STRICT_POOL") == "1"

# At most one log line per interval for each kind of pool trouble, however many requests
# run into it: under overload a line per request would add to the overload.
LOG_INTERVAL_S = 10.0

# Connections checked out of a pool, by the task that holds them (a pinned read's
# connection counts for the task that pinned it).
_held: dict[asyncio.Task[object] | None, int] = {}


class Pin(Protocol):
    """A connection kept between reads, which can be given back before a wait."""

    async def give_back(self) -> None: ...


_pins: dict[asyncio.Task[object] | None, list[Pin]] = {}


class PoolExhausted(Exception):
    """No pooled connection became free in time (or the server is shutting down)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HeldAcrossWait(RuntimeError):
    """A task waited for something other than the database while holding a connection."""


def current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def hold(task: asyncio.Task[object] | None) -> None:
    _held[task] = _held.get(task, 0) + 1


def drop(task: asyncio.Task[object] | None, pin: Pin | None = None) -> None:
    count = _held.get(task, 0) - 1
    if count > 0:
        _held[task] = count
    else:
        _held.pop(task, None)
    if pin is not None:
        pins = _pins.get(task)
        if pins is not None and pin in pins:
            pins.remove(pin)
            if not pins:
                del _pins[task]


def keep_pin(task: asyncio.Task[object] | None, pin: Pin) -> None:
    """``pin`` holds a connection for ``task`` (counted by ``hold``) between its reads."""
    _pins.setdefault(task, []).append(pin)


async def before_waiting(waiting_for: str) -> None:
    """Before the current task waits for ``waiting_for`` (another request's read, a lock):
    the connections its pinned reads keep go back to the pool (its next read takes one
    again), and it must hold no other."""
    for pin in list(_pins.get(current_task(), ())):
        await pin.give_back()
    check_not_holding(waiting_for)


def held_here() -> int:
    """Connections the current task holds."""
    return _held.get(current_task(), 0)


def check_not_holding(waiting_for: str) -> None:
    """Called before waiting for ``waiting_for``: the current task must hold no connection."""
    held = _held.get(current_task(), 0)
    if not held:
        return
    message = f"waiting for {waiting_for} while holding {held} pooled database connection(s)"
    if STRICT:
        raise HeldAcrossWait(message)
    _pressure.log("held", logging.ERROR, message)


class _Pressure:
    """Counts of pool trouble since start, and a log line per interval for each kind."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (when, count then)

    def log(self, kind: str, level: int, message: str) -> None:
        count = self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        last = self._logged.get(kind)
        if last is not None and now - last[0] < LOG_INTERVAL_S:
            return
        since = count - (last[1] if last is not None else 0)
        self._logged[kind] = (now, count)
        logger.log(level, "%s (%d times since the last report, %d in all)", message, since, count)


_pressure = _Pressure()


def exhausted(message: str, retry_after_s: float) -> PoolExhausted:
    """The error for a request that got no connection; counted and logged per interval."""
    _pressure.log("exhausted", logging.WARNING, message)
    return PoolExhausted(message, retry_after_s)


def pressure_counts() -> dict[str, int]:
    """How often requests found no connection (``exhausted``) or held one across a wait
    (``held``), since start."""
    return dict(_pressure.counts)
