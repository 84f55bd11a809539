"""Singleton jobs: a background job that must run on one worker at a time runs where its
lease is held (``job_leases``, through ``LeaseStore``).

Every worker runs one ``Singletons`` for all its singleton jobs. Every ``period_ms`` it
renews the leases it holds and takes those that are free or lapsed, all in one statement,
and starts the jobs of the leases it got. A lease lasts ``lease_ms`` from the statement; if
the worker cannot renew in time (the database out of reach, or too slow) it stops its jobs
before any lease could lapse, and a lease another worker took stops its job here. When a
holder dies (stops renewing), its leases lapse after ``lease_ms`` and the next round of
another worker takes them: a takeover within ``lease_ms + period_ms`` (8 s by default). A
stopping worker gives its leases up, so that another takes them at its next round. The
jobs keep their state in the database (queues, cursors): the new holder resumes where the
old one stopped. Lease times come from the database's clock, one for every worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger(__name__)


class LeaseStore(Protocol):
    async def hold_many(self, names: Collection[str], owner: str, lease_ms: int) -> set[str]:
        """Renew ``owner``'s leases among ``names`` and take the free or lapsed ones, for
        ``lease_ms``; the names held now."""
        ...

    async def release_many(self, names: Collection[str], owner: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    # A holder that has not renewed for this long has lost its jobs.
    lease_ms: int = 6_000
    # How often a worker renews its leases and tries to take the others.
    period_ms: int = 2_000
    # The jobs stop this long before the lease would lapse, if it could not be renewed.
    margin_ms: int = 500


@dataclass(eq=False, slots=True)
class Singleton:
    """One job under the lease ``name``: whether this worker runs it now."""

    name: str
    job: Callable[[], Awaitable[None]]
    task: asyncio.Future[None] | None = None
    # How many times this worker took the lease.
    terms: int = 0
    # The job returned by itself: it is not started again.
    finished: bool = False
    _failures: int = field(default=0)

    @property
    def held(self) -> bool:
        return self.task is not None


class Singletons:
    """The singleton jobs of one worker (``owner``: unique per worker process)."""

    def __init__(self, store: LeaseStore, owner: str, timing: LeaseTiming = LeaseTiming()) -> None:
        self._store = store
        self.owner = owner
        self.timing = timing
        self.jobs: dict[str, Singleton] = {}
        self._abandoned = False
        self._task: asyncio.Task[None] | None = None
        # Until when (monotonic) the leases held are known to be ours.
        self._expires = 0.0

    def add(self, name: str, job: Callable[[], Awaitable[None]]) -> Singleton:
        singleton = self.jobs[name] = Singleton(name, job)
        return singleton

    def held(self) -> set[str]:
        return {name for name, s in self.jobs.items() if s.held}

    def abandon(self) -> None:
        """Stop as a dead worker would: the jobs end, the leases are left to lapse (tests)."""
        self._abandoned = True
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        """The background job of every worker: a round every ``period_ms``, for ever. The
        leases are given up when the worker stops."""
        self._task = asyncio.current_task()
        try:
            while True:
                await self.run_once()
                await asyncio.sleep(self.timing.period_ms / 1000)
        finally:
            held = self.held()
            await self._stop(list(self.jobs.values()))
            if held and not self._abandoned:
                try:
                    # Shielded: the stop may cancel this task again while it releases.
                    await asyncio.shield(self._store.release_many(held, self.owner))
                except Exception:
                    logger.exception("leases not released", extra={"jobs": sorted(held)})

    async def run_once(self) -> None:
        """Renew and take leases; start and stop jobs to match."""
        timing = self.timing
        started = time.monotonic()
        # Holding leases, a claim may take until they would lapse; else up to a lease.
        wait_s = timing.lease_ms / 1000
        if self.held():
            wait_s = self._expires - started - timing.margin_ms / 1000
        got: set[str] | None = None
        if wait_s > 0:
            try:
                async with asyncio.timeout(wait_s):
                    got = await self._store.hold_many(
                        [n for n, s in self.jobs.items() if not s.finished],
                        self.owner,
                        timing.lease_ms,
                    )
            except TimeoutError:
                logger.warning("leases not renewed in time", extra={"owner": self.owner})
            except Exception:
                logger.exception("leases not renewed", extra={"owner": self.owner})
        if got is None:
            if self.held() and time.monotonic() + timing.period_ms / 1000 >= (
                self._expires - timing.margin_ms / 1000
            ):
                # The next round could end after the leases lapse: stop while they are ours.
                logger.warning("singleton jobs stopped: leases not renewed")
                await self._stop([s for s in self.jobs.values() if s.held])
            return
        self._expires = started + timing.lease_ms / 1000
        lost = [s for s in self.jobs.values() if s.held and s.name not in got]
        if lost:
            logger.warning("singleton leases lost", extra={"jobs": [s.name for s in lost]})
            await self._stop(lost)
        done = [name for name in got if not self._start(self.jobs[name])]
        if done:  # for the next worker that runs them (a restart)
            try:
                await self._store.release_many(done, self.owner)
            except Exception:
                logger.exception("leases not released", extra={"jobs": done})

    def _start(self, singleton: Singleton) -> bool:
        """Run the job if it is not running; False if it has finished (returned)."""
        task = singleton.task
        if task is not None and task.done():
            # Ended since the last round: a failure is logged and the job starts again
            # (this round's pause is its back-off); a job that returned is done.
            singleton.task = None
            if task.cancelled() or task.exception() is None:
                singleton.finished = True
                return False
            logger.error(
                "singleton job failed", exc_info=task.exception(), extra={"job": singleton.name}
            )
        if singleton.task is None and not singleton.finished:
            singleton.terms += 1
            logger.info("singleton job taken", extra={"job": singleton.name, "owner": self.owner})
            singleton.task = asyncio.ensure_future(singleton.job())
        return not singleton.finished

    async def _stop(self, singletons: list[Singleton]) -> None:
        tasks = [s.task for s in singletons if s.task is not None]
        for singleton in singletons:
            singleton.task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
